"""YOLOv5 (v7.0) training loss: CIoU box regression, objectness and class BCE, and target assignment.

Conventions used throughout this module:
- predictions ``p`` are the raw training outputs of ``Detect``: a list of ``nl`` tensors ``(bs, na, ny, nx, no)``
  with ``no = 5 + nc`` logits (x, y, w, h, obj, cls...);
- ``targets`` is ``(n, 6)`` = ``[image index, class, xc, yc, w, h]`` with the box normalized to 0-1;
- anchors (``Detect.anchors``, ``(nl, na, 2)``) are in stride units, i.e. grid cells of their level.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from utils.torch_utils import de_parallel


def bbox_iou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    xywh: bool = True,
    GIoU: bool = False,
    DIoU: bool = False,
    CIoU: bool = False,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Elementwise IoU (or GIoU / DIoU / CIoU) of ``box1`` (1,4) or (n,4) against ``box2`` (n,4), any units.

    Boxes are ``xywh`` (centre, size) when ``xywh`` else ``xyxy`` corners. Returns ``(n, 1)``.
    ``eps`` keeps the ratios finite; in CIoU the trade-off weight ``alpha`` is treated as a constant
    (no gradient), as in the CIoU paper and upstream YOLOv5.
    """
    if xywh:
        (cx1, cy1, w1, h1), (cx2, cy2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        ax1, ax2, ay1, ay2 = cx1 - w1 / 2, cx1 + w1 / 2, cy1 - h1 / 2, cy1 + h1 / 2
        bx1, bx2, by1, by2 = cx2 - w2 / 2, cx2 + w2 / 2, cy2 - h2 / 2, cy2 + h2 / 2
    else:
        ax1, ay1, ax2, ay2 = box1.chunk(4, -1)
        bx1, by1, bx2, by2 = box2.chunk(4, -1)
        # heights floored at eps so that the aspect-ratio term w/h below never divides by zero
        w1, h1 = ax2 - ax1, (ay2 - ay1).clamp(eps)
        w2, h2 = bx2 - bx1, (by2 - by1).clamp(eps)

    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou

    # smallest enclosing box
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if GIoU and not (DIoU or CIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area

    c2 = cw**2 + ch**2 + eps  # squared diagonal of the enclosing box
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4  # squared centre distance
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothed BCE targets ``(positive, negative) = (1 - eps/2, eps/2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss wrapped around an ``nn.BCEWithLogitsLoss``: ``bce * alpha_t * (1 - p_t) ** gamma``.

    The wrapped loss is switched to ``reduction='none'``; its original reduction is applied afterwards.
    """

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = 'none'

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``pred`` against targets ``true`` in [0, 1]."""
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)  # probability given to the true outcome
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == 'mean':
            return loss.mean()
        if self.reduction == 'sum':
            return loss.sum()
        return loss


def scale_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """Return a copy of ``hyp`` with the box/cls/obj gains scaled to the model and image size (``imgsz`` pixels).

    The hyp files are tuned for 3 output levels, 80 classes and 640 px; objectness scales with the number
    of grid cells (image area) and class loss with the number of classes.
    """
    h = dict(hyp)
    h['box'] = hyp['box'] * 3 / nl
    h['cls'] = hyp['cls'] * nc / 80 * 3 / nl
    h['obj'] = hyp['obj'] * (imgsz / 640) ** 2 * 3 / nl
    return h


class ComputeLoss:
    """YOLOv5 loss for a ``DetectionModel`` whose ``hyp`` dict holds the loss hyper-parameters.

    Call with training predictions and targets; returns ``(loss * bs (1,), [lbox, lobj, lcls] detached (3,))``.
    """

    sort_obj_iou = False  # upstream default: when several targets share a cell, the last written wins

    def __init__(self, model: nn.Module, autobalance: bool = False) -> None:
        device = next(model.parameters()).device
        h = model.hyp

        BCEcls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h['cls_pw']], device=device))
        BCEobj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([h['obj_pw']], device=device))
        self.cp, self.cn = smooth_BCE(eps=h.get('label_smoothing', 0.0))
        g = h.get('fl_gamma', 0.0)
        if g > 0:
            BCEcls, BCEobj = FocalLoss(BCEcls, g), FocalLoss(BCEobj, g)

        m = de_parallel(model).model[-1]  # Detect
        # objectness weight per level: small-stride levels have many more (mostly negative) cells
        self.balance = [4.0, 1.0, 0.4] if m.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
        strides = [int(s) for s in m.stride]
        if autobalance and 16 not in strides:
            raise ValueError(f'autobalance needs a stride-16 output level, model strides are {strides}')
        self.ssi = strides.index(16) if autobalance else 0
        self.BCEcls, self.BCEobj, self.gr, self.hyp, self.autobalance = BCEcls, BCEobj, 1.0, h, autobalance
        self.na, self.nc, self.nl = m.na, m.nc, m.nl
        self.anchors = m.anchors  # (nl, na, 2) stride units; shared with the model, so AutoAnchor edits show
        self.device = device

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of predictions ``p`` (list of (bs, na, ny, nx, no)) against ``targets`` (n, 6) normalized."""
        lcls = torch.zeros(1, device=self.device)
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = self.build_targets(p, targets)

        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                # centre may move 0.5 cell beyond its cell (neighbour cells are assigned too);
                # size is 0..4x the anchor
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()

                # objectness target = how well this cell's box fits (CIoU floored at 0)
                iou = iou.detach().clamp(0).type(tobj.dtype)
                if self.sort_obj_iou:  # ascending, so the best fit is written last into a shared cell
                    j = iou.argsort()
                    b, a, gj, gi, iou = b[j], a[j], gj[j], gi[j], iou[j]
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou

                if self.nc > 1:  # a single class needs no class loss
                    t = torch.full_like(pcls, self.cn)
                    t[range(n), tcls[i]] = self.cp
                    lcls += self.BCEcls(pcls, t)

            obji = self.BCEobj(pi[..., 4], tobj)
            lobj += obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox *= self.hyp['box']
        lobj *= self.hyp['obj']
        lcls *= self.hyp['cls']
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(
        self, p: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
        """Assign targets to (level, anchor, cell).

        A target goes to every anchor whose width and height ratios to it are within ``hyp['anchor_t']``,
        in its own cell plus the two nearest neighbour cells (left/up/right/down by which half of the cell
        holds the centre). Returns per level: ``tcls`` (m,) class, ``tbox`` (m, 4) xywh in grid units with xy
        relative to the cell corner, ``indices`` (image, anchor, gj, gi), ``anch`` (m, 2) anchor wh in grid units.
        """
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=self.device)
        ai = torch.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7) [img cls x y w h anchor]

        g = 0.5  # a centre within g of a cell edge also uses the neighbour across that edge
        off = (
            torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=self.device).float() * g
        )  # own cell, left, up, right, down (subtracted from xy)

        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape, device=self.device)[[3, 2, 3, 2]].float()  # normalized -> grid

            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]  # (na, nt, 2) wh ratio
                j = torch.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']
                t = t[j]

                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance from the far edges
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                l, m = ((gxi % 1 < g) & (gxi > 1)).T
                j = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t = targets[0]
                offsets = 0

            bc, gxy, gwh, a = t.chunk(4, 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gij[:, 0].clamp_(0, shape[3] - 1)
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T

            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)

        return tcls, tbox, indices, anch
