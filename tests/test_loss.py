"""Tests for utils/loss.py: IoU variants, target assignment goldens, loss values and gradients."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.ops import complete_box_iou, distance_box_iou, generalized_box_iou

from utils.loss import ComputeLoss, FocalLoss, bbox_iou, scale_loss_gains, smooth_BCE

LN2 = math.log(2)
HYP = {'box': 0.05, 'cls': 0.5, 'cls_pw': 1.0, 'obj': 1.0, 'obj_pw': 1.0, 'anchor_t': 4.0, 'fl_gamma': 0.0}


class _Detect(nn.Module):
    """Stand-in for models.yolo.Detect: only the attributes the loss reads."""

    def __init__(self, anchors, stride, nc):
        super().__init__()
        self.register_buffer('anchors', torch.tensor(anchors, dtype=torch.float32))  # stride units
        self.stride = torch.tensor(stride, dtype=torch.float32)
        self.nl, self.na = self.anchors.shape[:2]
        self.nc, self.no = nc, nc + 5
        self.conv = nn.Conv2d(1, 1, 1)  # so that the model has parameters (device lookup)


class _Model(nn.Module):
    def __init__(self, anchors, stride, nc=2, hyp=None):
        super().__init__()
        self.model = nn.Sequential(_Detect(anchors, stride, nc))
        self.hyp = dict(HYP if hyp is None else hyp)


# two levels, two square anchors each, 64 px image -> grids 8x8 (stride 8) and 4x4 (stride 16)
ANCHORS = [[[1.0, 1.0], [4.0, 4.0]], [[2.0, 2.0], [8.0, 8.0]]]
STRIDE = [8.0, 16.0]
# target A: image 0, class 1, centre (36, 36) px, 8x8 px  -> level 0 cell (4, 4) exactly at its centre
# target B: image 1, class 0, centre (10, 50) px, 32x32 px -> near the top-left of its level-0 cell
TARGET_A = [0, 1, 36 / 64, 36 / 64, 8 / 64, 8 / 64]
TARGET_B = [1, 0, 10 / 64, 50 / 64, 32 / 64, 32 / 64]


def _preds(bs=2, nc=2, fill=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(bs, 2, 8, 8, 5 + nc), (bs, 2, 4, 4, 5 + nc)]
    if fill is not None:
        return [torch.full(s, float(fill), requires_grad=True) for s in shapes]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _assigned(indices, tbox, level):
    """(b, a, gj, gi, tx, ty, tw, th) rows of one level, in output order."""
    b, a, gj, gi = (x.tolist() for x in indices[level])
    return [(b[n], a[n], gj[n], gi[n], *[round(v, 6) for v in tbox[level][n].tolist()]) for n in range(len(b))]


# ---------------------------------------------------------------- bbox_iou


def test_iou_variants_hand_values():
    b1 = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # xyxy (0,0)-(2,2)
    b2 = torch.tensor([[2.0, 2.0, 2.0, 2.0]])  # xyxy (1,1)-(3,3): overlap 1, union 7, hull 3x3
    iou = 1 / 7
    assert bbox_iou(b1, b2).item() == pytest.approx(iou, abs=1e-6)
    assert bbox_iou(b1, b2, GIoU=True).item() == pytest.approx(iou - 2 / 9, abs=1e-6)
    assert bbox_iou(b1, b2, DIoU=True).item() == pytest.approx(iou - 2 / 18, abs=1e-6)
    assert bbox_iou(b1, b2, CIoU=True).item() == pytest.approx(iou - 2 / 18, abs=1e-6)  # same aspect: v = 0
    # xyxy input gives the same
    assert bbox_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]]), xywh=False, GIoU=True).item() == (
        pytest.approx(iou - 2 / 9, abs=1e-6))


def test_ciou_aspect_term_hand_value():
    b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # concentric 2x2 and 4x2: iou 4/8, rho 0
    b2 = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (v - 0.5 + 1)
    assert bbox_iou(b1, b2, CIoU=True).item() == pytest.approx(0.5 - v * alpha, abs=1e-6)


def test_iou_broadcast_and_shape():
    b1 = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    b2 = torch.tensor([[1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0], [10.0, 10.0, 1.0, 1.0]])
    out = bbox_iou(b1, b2)
    assert out.shape == (3, 1)
    assert out[:, 0].tolist() == pytest.approx([1.0, 1 / 7, 0.0], abs=1e-6)


def test_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(1)
    xy1 = torch.rand(50, 2, generator=g) * 50
    b1 = torch.cat((xy1, xy1 + 1 + torch.rand(50, 2, generator=g) * 30), 1)
    xy2 = xy1 + torch.randn(50, 2, generator=g) * 8
    b2 = torch.cat((xy2, xy2 + 1 + torch.rand(50, 2, generator=g) * 30), 1)
    # torchvision puts eps only in the hull diagonal and none in union or alpha: differences are O(1e-7)
    for fn, kw in ((complete_box_iou, {'CIoU': True}), (distance_box_iou, {'DIoU': True}),
                   (generalized_box_iou, {'GIoU': True})):
        ours = bbox_iou(b1, b2, xywh=False, **kw)[:, 0]
        ref = fn(b1, b2).diagonal()
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_ciou_alpha_is_constant():
    # d(CIoU)/dw with alpha held fixed; differs from the full derivative when v != 0
    b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    b2 = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    bbox_iou(b1, b2, CIoU=True).sum().backward()
    w = torch.tensor(2.0, requires_grad=True)
    iou = (w * 2) / (w * 2 + 8 - w * 2 + 1e-7)  # inter = 2w (w <= 4), union = 8 + eps
    v = 4 / math.pi**2 * (math.atan(2.0) - torch.atan(w / 2)) ** 2
    alpha = (v / (v - iou + 1 + 1e-7)).detach()
    (iou - v * alpha).backward()
    assert b1.grad[0, 2].item() == pytest.approx(w.grad.item(), abs=1e-6)


def test_smooth_bce_and_focal():
    assert smooth_BCE(0.1) == pytest.approx((0.95, 0.05))
    assert smooth_BCE(0.0) == (1.0, 0.0)
    fl = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5, alpha=0.25)
    # logit 0 -> p = 0.5, bce = ln 2, p_t = 0.5, alpha_t = 0.25 (positive) / 0.75 (negative)
    out = fl(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert out.item() == pytest.approx(LN2 * 0.5**1.5 * (0.25 + 0.75) / 2, abs=1e-6)


def test_scale_loss_gains():
    hyp = {'box': 0.05, 'cls': 0.5, 'obj': 1.0, 'lr0': 0.01}
    assert scale_loss_gains(hyp, nl=3, nc=80, imgsz=640) == pytest.approx(hyp)
    h = scale_loss_gains(hyp, nl=4, nc=20, imgsz=320)
    assert h == pytest.approx({'box': 0.0375, 'cls': 0.09375, 'obj': 0.1875, 'lr0': 0.01})
    assert hyp['box'] == 0.05  # input untouched


# ---------------------------------------------------------------- build_targets


def test_build_targets_golden():
    loss = ComputeLoss(_Model(ANCHORS, STRIDE))
    tcls, tbox, indices, anch = loss.build_targets(_preds(), torch.tensor([TARGET_A, TARGET_B]))
    # level 0: A (grid wh 1x1) fits anchor 0 only (ratio to anchor 1 is exactly 4, not < 4), own cell only;
    # B (grid xy 1.25, 6.25, wh 4x4) fits anchor 1; in the low half of its cell in x and y -> left and up cells.
    # order: own cells (anchor-major), then left, up, right, down neighbours
    assert _assigned(indices, tbox, 0) == [
        (0, 0, 4, 4, 0.5, 0.5, 1.0, 1.0),
        (1, 1, 6, 1, 0.25, 0.25, 4.0, 4.0),
        (1, 1, 6, 0, 1.25, 0.25, 4.0, 4.0),  # left
        (1, 1, 5, 1, 0.25, 1.25, 4.0, 4.0),  # up
    ]
    assert tcls[0].tolist() == [1, 0, 0, 0]
    assert anch[0].tolist() == [[1, 1], [4, 4], [4, 4], [4, 4]]
    # level 1: A (0.5x0.5) fits nothing; B at (0.625, 3.125), 2x2 -> anchor 0;
    # x in the high half (and 0.625 < 1 anyway) -> right; y low half and > 1 -> up
    assert _assigned(indices, tbox, 1) == [
        (1, 0, 3, 0, 0.625, 0.125, 2.0, 2.0),
        (1, 0, 2, 0, 0.625, 1.125, 2.0, 2.0),  # up
        (1, 0, 3, 1, -0.375, 0.125, 2.0, 2.0),  # right
    ]
    assert tcls[1].tolist() == [0, 0, 0]
    assert anch[1].tolist() == [[2, 2]] * 3


@pytest.mark.parametrize('xy_px, cells', [
    ((4, 4), [(0, 0)]),  # grid (0.5, 0.5): cell centre, nothing within 0.5 of an edge
    ((6, 6), [(0, 0), (0, 1), (1, 0)]),  # grid (0.75, 0.75): right and down neighbours; (left/up need xy > 1)
    ((2, 2), [(0, 0)]),  # grid (0.25, 0.25): near the corner, but no cells beyond the image
    ((62, 58), [(7, 7), (6, 7)]),  # grid (7.75, 7.25): up only (right would leave the 8x8 grid)
    ((12, 60), [(7, 1)]),  # grid (1.5, 7.5): exactly mid-cell in x and y -> no neighbours
    ((20, 30), [(3, 2), (4, 2)]),  # grid (2.5, 3.75): down only
])
def test_build_targets_neighbours(xy_px, cells):
    loss = ComputeLoss(_Model(ANCHORS, STRIDE))
    x, y = xy_px
    t = torch.tensor([[0, 0, x / 64, y / 64, 8 / 64, 8 / 64]])
    _, _, indices, _ = loss.build_targets(_preds(), t)
    b, a, gj, gi = indices[0]
    assert (a == 0).all()
    assert list(zip(gj.tolist(), gi.tolist())) == cells
    assert indices[1][0].numel() == 0  # 8 px box vs 32 px anchors (ratio 4) at level 1: no match


def test_build_targets_clamps_to_grid():
    # centre on the right image edge: grid x = 8.0 -> cell 8 clamped to 7, tbox x = 1.0; and its left neighbour
    loss = ComputeLoss(_Model(ANCHORS, STRIDE))
    t = torch.tensor([[0, 0, 1.0, 36 / 64, 8 / 64, 8 / 64]])
    _, tbox, indices, _ = loss.build_targets(_preds(), t)
    assert _assigned(indices, tbox, 0) == [(0, 0, 4, 7, 1.0, 0.5, 1.0, 1.0), (0, 0, 4, 7, 1.0, 0.5, 1.0, 1.0)]


def test_build_targets_empty():
    loss = ComputeLoss(_Model(ANCHORS, STRIDE))
    tcls, tbox, indices, anch = loss.build_targets(_preds(), torch.zeros((0, 6)))
    for i in range(2):
        assert tcls[i].numel() == 0 and tbox[i].shape == (0, 4) and anch[i].shape == (0, 2)
        assert all(x.numel() == 0 for x in indices[i])


# ---------------------------------------------------------------- loss values


def _ciou_equal_squares(dx, dy, w):
    """CIoU of two w x w squares whose centres differ by (dx, dy): the aspect term vanishes."""
    inter = (w - abs(dx)) * (w - abs(dy))
    iou = inter / (2 * w * w - inter)
    c2 = (w + abs(dx)) ** 2 + (w + abs(dy)) ** 2
    return iou - (dx * dx + dy * dy) / c2


def test_loss_golden_zero_logits():
    # all-zero logits predict (0.5, 0.5) in the cell with exactly the anchor size, and every BCE term is ln 2
    loss_fn = ComputeLoss(_Model(ANCHORS, STRIDE))
    p = _preds(fill=0.0)
    loss, items = loss_fn(p, torch.tensor([TARGET_A, TARGET_B]))
    level0 = [1.0, _ciou_equal_squares(-0.25, -0.25, 4), _ciou_equal_squares(0.75, -0.25, 4),
              _ciou_equal_squares(-0.25, 0.75, 4)]
    level1 = [_ciou_equal_squares(0.125, -0.375, 2), _ciou_equal_squares(0.125, 0.625, 2),
              _ciou_equal_squares(-0.875, -0.375, 2)]
    lbox = HYP['box'] * (sum(1 - c for c in level0) / 4 + sum(1 - c for c in level1) / 3)
    lobj = HYP['obj'] * LN2 * (4.0 + 1.0)  # balance [4.0, 1.0, ...] for 2 levels
    lcls = HYP['cls'] * LN2 * 2  # one class term per level with targets
    assert items.tolist() == pytest.approx([lbox, lobj, lcls], abs=1e-5)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(2 * (lbox + lobj + lcls), abs=1e-5)  # times batch size 2

    # objectness targets are the detached CIoU: d loss / d obj-logit = bs * obj * balance * (0.5 - t) / cells
    loss.backward()
    c0 = 2 * HYP['obj'] * 4.0 / (2 * 2 * 8 * 8)
    g = p[0].grad[..., 4]
    assert g[0, 0, 4, 4].item() == pytest.approx(c0 * (0.5 - 1.0), abs=1e-6)  # A, iou 1
    assert g[1, 1, 6, 1].item() == pytest.approx(c0 * (0.5 - level0[1]), abs=1e-6)  # B, own cell
    assert g[0, 1, 0, 0].item() == pytest.approx(c0 * 0.5, abs=1e-6)  # background
    # box gradients only where targets were assigned; the iou-1 box is at its optimum
    box_grad = p[0].grad[..., :4].abs().sum(-1)
    assert box_grad[1, 1, 6, 1] > 0 and box_grad[0, 1, 3, 3] == 0
    assert box_grad[0, 0, 4, 4].item() == pytest.approx(0.0, abs=1e-5)


def test_loss_no_targets_only_objectness():
    loss_fn = ComputeLoss(_Model(ANCHORS, STRIDE))
    p = _preds(seed=3)
    loss, items = loss_fn(p, torch.zeros((0, 6)))
    lobj = sum(b * nn.functional.binary_cross_entropy_with_logits(pi[..., 4], torch.zeros_like(pi[..., 4])).item()
               for b, pi in zip([4.0, 1.0], p))
    assert items.tolist() == pytest.approx([0.0, lobj, 0.0], abs=1e-6)
    loss.backward()
    assert p[0].grad[..., :4].abs().sum() == 0 and p[0].grad[..., 5:].abs().sum() == 0
    assert p[0].grad[..., 4].abs().sum() > 0


def test_loss_random_finite_with_gradients():
    torch.manual_seed(0)
    model = _Model(ANCHORS, STRIDE, nc=3, hyp={**HYP, 'fl_gamma': 1.5, 'cls_pw': 2.0, 'label_smoothing': 0.1})
    loss_fn = ComputeLoss(model)
    p = _preds(nc=3, seed=5)
    t = torch.tensor([TARGET_A, TARGET_B, [1, 2, 0.3, 0.4, 0.2, 0.1]])
    loss, items = loss_fn(p, t)
    assert torch.isfinite(loss).all() and (items > 0).all()
    assert not items.requires_grad and loss.requires_grad
    loss.backward()
    for pi in p:
        assert torch.isfinite(pi.grad).all() and pi.grad.abs().sum() > 0


def test_single_class_has_no_class_loss():
    loss_fn = ComputeLoss(_Model(ANCHORS, STRIDE, nc=1))
    _, items = loss_fn(_preds(nc=1), torch.tensor([TARGET_A, TARGET_B]))
    assert items[2].item() == 0.0 and items[0].item() > 0


def test_sort_obj_iou_writes_best_last():
    # two targets on the same cell and anchor, the perfect fit first (so unsorted, the worse one is written last);
    # with sorting, the better-fitting box sets the objectness target
    t = torch.tensor([[0, 0, 36 / 64, 36 / 64, 8 / 64, 8 / 64], [0, 0, 35 / 64, 35 / 64, 12 / 64, 12 / 64]])
    loss_fn = ComputeLoss(_Model(ANCHORS, STRIDE))
    loss_fn.sort_obj_iou = True
    p = _preds(fill=0.0)
    loss_fn(p, t)[0].backward()
    c0 = 2 * HYP['obj'] * 4.0 / (2 * 2 * 8 * 8)
    assert p[0].grad[0, 0, 4, 4, 4].item() == pytest.approx(c0 * (0.5 - 1.0), abs=1e-6)


def test_balance_and_autobalance():
    three = _Model([[[1, 1]], [[2, 2]], [[4, 4]]], [8, 16, 32])
    assert ComputeLoss(three).balance == [4.0, 1.0, 0.4]
    lf = ComputeLoss(three, autobalance=True)
    assert lf.ssi == 1
    p = [torch.zeros(1, 1, s, s, 7) for s in (8, 4, 2)]
    lf(p, torch.zeros((0, 6)))
    assert lf.balance[1] == 1.0  # renormalized to the stride-16 level
    with pytest.raises(ValueError, match='stride-16'):
        ComputeLoss(_Model([[[1, 1]], [[2, 2]]], [8, 32]), autobalance=True)


def test_loss_on_detection_model():
    # the real head: every parameter gets a finite gradient from the loss of a tiny batch
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(str(Path(__file__).parents[1] / 'models' / 'yolov5n.yaml'), nc=2)
    model.hyp = scale_loss_gains(HYP, nl=3, nc=2, imgsz=64)
    model.train()
    p = model(torch.rand(2, 3, 64, 64))
    loss, items = ComputeLoss(model)(p, torch.tensor([TARGET_A, TARGET_B]))
    assert torch.isfinite(loss).all() and (items > 0).all()
    loss.backward()
    for name, w in model.named_parameters():
        assert w.grad is not None and torch.isfinite(w.grad).all(), name
