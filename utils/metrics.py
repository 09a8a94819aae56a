"""Detection metrics with the exact definitions of upstream YOLOv5 v7.0 (val.py / utils/metrics.py).

Numbers produced here are meant to be compared side by side with upstream val.py, so the upstream
conventions are kept on purpose, including the quirks (each one is commented where it lives):
- AP is the COCO 101-point interpolated area; a perfect detector scores 0.995, not 1.0, because the
  last sample point (recall 1.0) reads the precision sentinel 0.
- P, R and F1 are reported at the single confidence that maximises the smoothed class-mean F1.
- The matcher (`process_batch`) de-duplicates per label in detection-index order (see its docstring).

All boxes are (x1, y1, x2, y2) in the same units (normally pixels of the original image).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness per row of x (n, >=4) [P, R, mAP@0.5, mAP@0.5:0.95, ...]: 0.1*mAP@0.5 + 0.9*mAP@0.5:0.95."""
    w = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[:, :4] * w).sum(1)


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter y with a window of fraction f of its length (odd number of taps), edges padded with end values."""
    nf = round(len(y) * f * 2) // 2 + 1  # odd window length
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode='valid')


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral; numpy 2 renamed np.trapz to np.trapezoid (and later removed the old name)."""
    integrate = getattr(np, 'trapezoid', None) or getattr(np, 'trapz')
    return float(integrate(y, x))


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Average precision of one PR curve (points ordered by decreasing confidence), COCO 101-point interpolation.

    Returns (ap, mpre, mrec): the AP in [0, 1], and the precision envelope / recall with sentinels
    (recall 0 -> precision 1 in front, recall 1 -> precision 0 at the end).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))

    # Envelope: precision at recall r becomes the best precision at any recall >= r
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))

    x = np.linspace(0, 1, 101)  # COCO's 101 recall points
    ap = _trapezoid(np.interp(x, mrec, mpre), x)
    return ap, mpre, mrec


@dataclass
class PRCurves:
    """Per-class curves of one evaluation, for plotting: P, R and F1 against confidence ``px`` (1000 points in
    [0, 1]), precision ``py`` against recall ``px`` (IoU 0.5), all (nc, 1000); ``ap`` (nc, t); ``names`` of the
    classes with ground truth, in row order."""

    px: np.ndarray
    py: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    names: dict


def ap_per_class(tp: np.ndarray,
                 conf: np.ndarray,
                 pred_cls: np.ndarray,
                 target_cls: np.ndarray,
                 names: dict | list | tuple = (),
                 eps: float = 1e-16,
                 return_curves: bool = False) -> tuple:
    """Per-class P, R, F1 and AP from all detections of a data set (upstream YOLOv5 v7.0 definitions).

    Args:
        tp: (n, t) bool/0-1, detection i is a true positive at IoU threshold j (t = 10 for 0.5:0.95).
        conf: (n,) detection confidence in [0, 1].
        pred_cls: (n,) detected class index.
        target_cls: (m,) class index of every ground-truth object.
        names: {class index: name} (or a list), kept in the curves for plot legends.
        return_curves: also return the PRCurves (utils.plots.plot_pr_curves draws them).
    Returns:
        (tp, fp, p, r, f1, ap, classes): for each class c that has ground truth (classes, ascending):
        tp/fp counts, precision, recall and F1 at the confidence maximising the smoothed mean F1
        (all shape (nc,)), ap (nc, t), classes (nc,) int; then the PRCurves if ``return_curves``.
    """
    tp, conf, pred_cls, target_cls = (np.asarray(a) for a in (tp, conf, pred_cls, target_cls))
    if tp.ndim == 1:
        tp = tp[:, None]

    # Sort by confidence, highest first
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]

    unique_classes, nt = np.unique(target_cls, return_counts=True)  # classes with labels, label counts
    nc = unique_classes.shape[0]
    if nc == 0:  # no ground truth at all: nothing to score (upstream would warn on empty means)
        z = np.zeros(0)
        out = z, z, z, z, z, np.zeros((0, tp.shape[1])), unique_classes.astype(int)
        return (*out, PRCurves(np.linspace(0, 1, 1000), *(np.zeros((0, 1000)),) * 4, out[5], {})) if return_curves \
            else out

    px = np.linspace(0, 1, 1000)  # confidence axis for the P/R/F1 curves
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    py = np.zeros((nc, 1000))  # precision at px recall points (IoU 0.5), for the PR plot
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = nt[ci]  # labels of this class
        n_p = i.sum()  # detections of this class
        if n_p == 0 or n_l == 0:
            continue

        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)

        recall = tpc / (n_l + eps)
        # np.interp needs increasing xp: confidences decrease, so interpolate against their negatives
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)

        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)  # above the top confidence: precision 1

        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if return_curves and j == 0:
                py[ci] = np.interp(px, mrec, mpre)

    f1 = 2 * p * r / (p + r + eps)
    if not isinstance(names, dict):
        names = dict(enumerate(names))
    names = dict(enumerate(v for k, v in names.items() if k in unique_classes))  # only classes with data
    curves = PRCurves(px, py, p, r, f1, ap, names)
    i = smooth(f1.mean(0), 0.1).argmax()  # confidence index of max smoothed mean F1
    p, r, f1 = p[:, i], r[:, i], f1[:, i]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    out = tp, fp, p, r, f1, ap, unique_classes.astype(int)
    return (*out, curves) if return_curves else out


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, M) of xyxy boxes box1 (N, 4) and box2 (M, 4).

    Note: upstream adds 1e-7 to the union; torchvision does not. Only IoUs within ~1e-7 of a
    threshold can be decided differently.
    """
    return torchvision.ops.box_iou(box1, box2)


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Mark each detection correct or not at each IoU threshold (the val.py matcher of upstream v7.0).

    Args:
        detections: (n, 6) [x1, y1, x2, y2, conf, cls], normally in NMS order (confidence descending).
        labels: (m, 5) [cls, x1, y1, x2, y2], same units as detections.
        iouv: (t,) IoU thresholds, e.g. torch.linspace(0.5, 0.95, 10).
    Returns:
        correct: (n, t) bool on iouv's device.

    Per threshold, candidate pairs have IoU >= threshold and the same class. They are sorted by IoU
    (descending) and each detection keeps its best label. Upstream then keeps, for each label, the
    first remaining pair in *detection-index* order (it does not re-sort by IoU before that step), so
    with NMS-ordered detections a label goes to its most confident candidate. Kept as upstream for
    identical numbers.
    """
    detections, labels = torch.as_tensor(detections), torch.as_tensor(labels)
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    iou = box_iou(labels[:, 1:], detections[:, :4])
    correct_class = labels[:, 0:1] == detections[:, 5]
    for i in range(len(iouv)):
        x = torch.where((iou >= iouv[i]) & correct_class)  # (label index, detection index)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()  # [label, det, iou]
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]  # best label per detection
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]  # first detection per label
            correct[matches[:, 1].astype(int), i] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


class ConfusionMatrix:
    """Detection confusion matrix (nc + 1, nc + 1): rows = predicted class, columns = true class.

    Index nc is 'background': row nc counts missed labels (FN), column nc counts detections that
    match no label (FP). Upstream v7.0 semantics.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf  # detections at or below this confidence are ignored
        self.iou_thres = iou_thres  # a match needs IoU strictly above this

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls], labels (m, 5) [cls, x1, y1, x2, y2].

        detections=None means the image has no detections; labels is then the (m,) class vector and
        every label counts as missed.
        """
        if detections is None:
            for gc in torch.as_tensor(labels).int().tolist():
                self.matrix[self.nc, gc] += 1  # background FN
            return

        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].int().tolist()
        detection_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4])

        x = torch.where(iou > self.iou_thres)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()  # [label, det, iou]
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]  # unlike val.py's matcher, re-sorted here
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        else:
            matches = np.zeros((0, 3))

        n = matches.shape[0] > 0
        m0, m1 = matches[:, 0].astype(int), matches[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if n and j.sum() == 1:
                self.matrix[detection_classes[m1[j][0]], gc] += 1  # matched (right or wrong class)
            else:
                self.matrix[self.nc, gc] += 1  # missed: background FN

        # Upstream counts unmatched detections as background FP only when the image had some match
        if n:
            for i, dc in enumerate(detection_classes):
                if not (m1 == i).any():
                    self.matrix[dc, self.nc] += 1  # background FP

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positive counts per class (nc,), background excluded."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, normalize: bool = True, save_dir: str | Path = '', names: dict | list | tuple = ()) -> Path:
        """Save confusion_matrix.png in save_dir (columns normalised to 1 when normalize); returns its path."""
        from matplotlib.figure import Figure

        names = list(names.values()) if isinstance(names, dict) else list(names)
        array = self.matrix / ((self.matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
        array[array < 0.005] = np.nan  # blank instead of 0.00

        nc, nn = self.nc, len(names)
        fig = Figure(figsize=(12, 9), tight_layout=True)
        ax = fig.subplots(1, 1)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # all-NaN matrix
            im = ax.imshow(array, cmap='Blues', vmin=0.0, interpolation='nearest')
        fig.colorbar(im, ax=ax)
        if nc < 30:  # annotate cells
            vmax = np.nanmax(array) if np.isfinite(array).any() else 1.0
            for (r, c), v in np.ndenumerate(array):
                if np.isfinite(v):
                    ax.text(c, r, f'{v:.2f}' if normalize else f'{v:.0f}', ha='center', va='center', fontsize=8,
                            color='white' if v > 0.5 * vmax else 'black')
        if 0 < nn < 99 and nn == nc:
            ticks, labels = range(nc + 1), names + ['background']
            ax.set_xticks(ticks, labels, rotation=90)
            ax.set_yticks(ticks, labels)
        ax.set_xlabel('True')
        ax.set_ylabel('Predicted')
        ax.set_title('Confusion Matrix')
        f = Path(save_dir) / 'confusion_matrix.png'
        fig.savefig(f, dpi=250)
        return f

    def print(self) -> None:
        """Print the matrix, one row per predicted class (background last)."""
        for i in range(self.nc + 1):
            print(' '.join(map(str, self.matrix[i])))


def bbox_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of xyxy box1 (4,) with each xyxy box2 (n, 4), over the area of box2: shape (n,)."""
    b1_x1, b1_y1, b1_x2, b1_y2 = box1
    b2_x1, b2_y1, b2_x2, b2_y2 = np.asarray(box2).T
    inter = (np.minimum(b1_x2, b2_x2) - np.maximum(b1_x1, b2_x1)).clip(0) * \
            (np.minimum(b1_y2, b2_y2) - np.maximum(b1_y1, b2_y1)).clip(0)
    return inter / ((b2_x2 - b2_x1) * (b2_y2 - b2_y1) + eps)


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU (n, m) of widths/heights wh1 (n, 2) and wh2 (m, 2) as if the boxes shared one corner."""
    wh1, wh2 = wh1[:, None], wh2[None]
    inter = torch.min(wh1, wh2).prod(2)
    return inter / (wh1.prod(2) + wh2.prod(2) - inter + eps)
