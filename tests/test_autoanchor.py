"""Tests for utils/autoanchor.py: anchor order, fit check, k-means and the evolved anchors."""

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.autoanchor import check_anchor_order, check_anchors, kmean_anchors, kmeans
from utils.general import LOGGER

# YOLOv5 v7.0 default anchors, pixels, P3/8, P4/16, P5/32
DEFAULT_PX = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]
STRIDE = [8.0, 16.0, 32.0]


class _Detect(nn.Module):
    """Stand-in for models.yolo.Detect: anchors buffer (stride units) and strides."""

    def __init__(self, anchors_px, stride):
        super().__init__()
        self.stride = torch.tensor(stride)
        self.register_buffer('anchors', torch.tensor(anchors_px, dtype=torch.float32) / self.stride.view(-1, 1, 1))


def _model(anchors_px=DEFAULT_PX, stride=STRIDE):
    model = nn.Module()
    model.model = nn.Sequential(_Detect(anchors_px, stride))
    return model


def _dataset(wh_px, n_images=100, img_wh=(640, 480), seed=0):
    """Stand-in LoadImagesAndLabels: images of ``img_wh`` pixels, labels with the given pixel sizes (cycled)."""
    rng = np.random.default_rng(seed)
    wh_px = np.asarray(wh_px, dtype=np.float64)
    labels = []
    for i in range(n_images):
        wh = wh_px[(np.arange(4) + 4 * i) % len(wh_px)] * rng.uniform(0.9, 1.1, size=(4, 1))
        xy = rng.uniform(0.3, 0.7, size=(4, 2))
        labels.append(np.concatenate((np.zeros((4, 1)), xy, wh / img_wh), 1).astype(np.float32))
    return SimpleNamespace(shapes=np.tile(np.array(img_wh, dtype=np.float64), (n_images, 1)), labels=labels)


def _bpr(anchors_px, wh, thr=4.0):
    r = wh[:, None] / anchors_px[None]
    return float((np.minimum(r, 1 / r).min(2).max(1) > 1 / thr).mean())


@pytest.fixture
def log_records():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    old_level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    yield records
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(old_level)


def test_check_anchor_order_flips_reversed_levels():
    m = _Detect([[[116, 90]], [[30, 61]], [[10, 13]]], STRIDE)
    check_anchor_order(m)
    # pixels become [[10, 13]], [[30, 61]], [[116, 90]], stored per level in units of that level's stride
    assert m.anchors.tolist() == [[[1.25, 1.625]], [[1.875, 3.8125]], [[3.625, 2.8125]]]
    before = m.anchors.clone()
    check_anchor_order(m)  # already in order: untouched
    assert torch.equal(m.anchors, before)


def test_check_anchor_order_uses_pixel_area():
    # in stride units the areas would read 4 > 1 (reversed), in pixels 16*16 < 32*32: correct order, no flip
    m = _Detect([[[16, 16]], [[32, 32]]], [4.0, 32.0])
    before = m.anchors.clone()
    check_anchor_order(m)
    assert torch.equal(m.anchors, before)


def test_check_anchors_good_fit_unchanged(log_records):
    model = _model()
    ds = _dataset(np.array(DEFAULT_PX).reshape(-1, 2))
    before = model.model[-1].anchors.clone()
    bpr = check_anchors(ds, model, thr=4.0, imgsz=640)
    assert bpr == 1.0
    assert torch.equal(model.model[-1].anchors, before)
    msg = '\n'.join(r.getMessage() for r in log_records)
    assert 'anchors/target, 1.000 Best Possible Recall (BPR)' in msg and 'good fit' in msg


def test_check_anchors_poor_fit_replaced(log_records):
    model = _model()
    wh = [[300, 8], [8, 300], [200, 6], [6, 200]]  # thin boxes: no default anchor within 4x in both sides
    ds = _dataset(wh)
    anchors_px = lambda: (model.model[-1].anchors * model.model[-1].stride.view(-1, 1, 1)).view(-1, 2).numpy()
    label_wh = np.concatenate([lb[:, 3:5] * s for s, lb in zip(ds.shapes, ds.labels)])  # pixels at 640
    bpr_before = _bpr(anchors_px(), label_wh)
    assert bpr_before < 0.5
    bpr = check_anchors(ds, model, thr=4.0, imgsz=640)
    assert bpr > 0.98 and _bpr(anchors_px(), label_wh) > 0.98
    a = model.model[-1].anchors
    assert a.shape == (3, 3, 2) and a.dtype == torch.float32
    area = anchors_px().prod(1)
    assert (np.diff(area) >= 0).all()  # evolved anchors come sorted by area: small ones on the small stride
    assert any('poor fit' in r.getMessage() for r in log_records)
    assert any('Done ✅' in r.getMessage() for r in log_records)


def test_check_anchors_no_labels():
    ds = SimpleNamespace(shapes=np.array([[640.0, 480.0]]), labels=[np.zeros((0, 5), np.float32)])
    model = _model()
    before = model.model[-1].anchors.clone()
    assert check_anchors(ds, model) == 0.0
    assert torch.equal(model.model[-1].anchors, before)


def test_kmeans_hand_clusters():
    pts = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    c, d = kmeans(pts, 2)
    assert sorted(map(tuple, c.tolist())) == [(0.0, 0.5), (10.0, 10.5)]
    assert d == pytest.approx(0.5)
    with pytest.raises(ValueError, match='k <= number of points'):
        kmeans(pts, 5)


def test_kmean_anchors_finds_clusters():
    centres = np.array([[200.0, 150.0], [10.0, 10.0], [50.0, 100.0]])
    ds = _dataset(centres, n_images=750, img_wh=(640, 640))  # 3000 boxes
    k = kmean_anchors(ds, n=3, img_size=640, gen=1000, verbose=False)
    assert k.shape == (3, 2) and k.dtype == np.float32
    np.testing.assert_allclose(k, centres[[1, 2, 0]], rtol=0.15)  # sorted by area


def test_kmean_anchors_deterministic_and_evolved():
    rng = np.random.default_rng(0)
    ds = _dataset(rng.lognormal(3.5, 0.8, size=(1000, 2)), n_images=250, img_wh=(640, 640))
    wh = np.concatenate([lb[:, 3:5] * 640 for lb in ds.labels])
    k1 = kmean_anchors(ds, n=9, img_size=640, gen=300, verbose=True)
    k2 = kmean_anchors(ds, n=9, img_size=640, gen=300, verbose=False)
    k0 = kmean_anchors(ds, n=9, img_size=640, gen=0, verbose=False)  # k-means only
    k3 = kmean_anchors(ds, n=9, img_size=640, gen=300, verbose=False, seed=1)
    assert k1.shape == (9, 2)
    np.testing.assert_array_equal(k1, k2)
    assert (np.diff(k1.prod(1)) >= 0).all()
    assert not np.array_equal(k1, k3)  # the seed matters

    def fitness(k):  # upstream's definition, written out independently
        r = wh[:, None] / k[None]
        best = np.minimum(r, 1 / r).min(2).max(1)
        return (best * (best > 0.25)).mean()

    assert fitness(k1) > fitness(k0)  # evolution improved on k-means


def test_kmean_anchors_fewer_labels_than_anchors():
    ds = SimpleNamespace(shapes=np.array([[640.0, 640.0]]),
                         labels=[np.array([[0, 0.5, 0.5, 0.1, 0.2], [0, 0.5, 0.5, 0.3, 0.3]], np.float32)])
    k = kmean_anchors(ds, n=4, img_size=640, gen=20, verbose=False)
    assert k.shape == (4, 2) and (np.diff(k.prod(1)) >= 0).all()


def test_kmean_anchors_from_data_yaml(tmp_path):
    """A data yaml path: its train split is loaded (labels checked against the yaml's nc, no augmentation)."""
    from tests.conftest import shapes_subset

    k = kmean_anchors(str(shapes_subset(tmp_path, 12, 4)), n=3, img_size=64, gen=10, verbose=False)
    assert k.shape == (3, 2) and (k > 0).all() and (np.diff(k.prod(1)) >= 0).all()


def test_check_anchors_on_detection_model():
    from models.yolo import DetectionModel

    model = DetectionModel(str(Path(__file__).parents[1] / 'models' / 'yolov5n.yaml'), nc=2)
    m = model.model[-1]
    ds = _dataset([[300, 8], [8, 300], [200, 6], [6, 200]])
    assert check_anchors(ds, model) > 0.98
    assert m.anchors.shape == (3, 3, 2) and (m.anchors * m.stride.view(-1, 1, 1)).prod(-1).mean(-1).diff().ge(0).all()
    model.eval()
    pred, _ = model(torch.zeros(1, 3, 64, 64))
    assert torch.isfinite(pred).all()
