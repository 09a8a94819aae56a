"""Golden values for box conversions, scaling, NMS and run-folder naming."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.general import (check_img_size, increment_path, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy,
                           xyxy2xywh, xyxy2xywhn)


def test_box_conversions_golden():
    xyxy = torch.tensor([[10., 20., 50., 80.]])
    assert xyxy2xywh(xyxy).tolist() == [[30., 50., 40., 60.]]
    assert xywh2xyxy(torch.tensor([[30., 50., 40., 60.]])).tolist() == [[10., 20., 50., 80.]]
    n = xyxy2xywhn(np.array([[10., 20., 50., 80.]]), w=100, h=200)
    assert np.allclose(n, [[0.3, 0.25, 0.4, 0.3]])
    assert np.allclose(xywhn2xyxy(n, w=100, h=200, padw=5, padh=7), [[15., 27., 55., 87.]])


def test_scale_boxes_letterbox_golden():
    # 200x100 (h, w) image letterboxed to 256x256: gain 1.28, pad_w = (256 - 128) / 2 = 64
    boxes = torch.tensor([[64., 0., 192., 256.]])
    out = scale_boxes((256, 256), boxes.clone(), (200, 100))
    assert torch.allclose(out, torch.tensor([[0., 0., 100., 200.]]))


def _pred(rows, nc=2):
    """rows: (cx, cy, w, h, obj, cls_id, cls_prob) -> (1, n, 5 + nc)."""
    p = torch.zeros(1, len(rows), 5 + nc)
    for i, (cx, cy, w, h, obj, c, pc) in enumerate(rows):
        p[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        p[0, i, 5 + c] = pc
    return p


def test_nms_golden():
    p = _pred([(50, 50, 20, 20, 0.9, 0, 1.0),   # kept
               (51, 50, 20, 20, 0.8, 0, 1.0),   # suppressed by the first (IoU ~0.9)
               (51, 50, 20, 20, 0.7, 1, 1.0),   # other class: kept unless agnostic
               (150, 150, 10, 10, 0.2, 0, 1.0)])  # below conf 0.25
    out = non_max_suppression(p, 0.25, 0.45)[0]
    assert out.shape == (2, 6)
    assert torch.allclose(out[0], torch.tensor([40., 40., 60., 60., 0.9, 0.]))
    assert out[1, 5] == 1
    assert len(non_max_suppression(p, 0.25, 0.45, agnostic=True)[0]) == 1
    assert non_max_suppression(p, 0.25, 0.45, classes=[1])[0][:, 5].tolist() == [1.0]
    assert len(non_max_suppression(p, 0.25, 0.45, max_det=1)[0]) == 1


def test_nms_conf_is_obj_times_cls():
    p = _pred([(50, 50, 20, 20, 0.5, 1, 0.8)])
    out = non_max_suppression(p, 0.3, 0.45)[0]
    assert torch.allclose(out[0, 4], torch.tensor(0.4))
    assert len(non_max_suppression(p, 0.45, 0.45)[0]) == 0


def test_nms_multi_label():
    p = _pred([(50, 50, 20, 20, 1.0, 0, 0.9)])
    p[0, 0, 6] = 0.6
    out = non_max_suppression(p, 0.5, 0.45, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]


def test_nms_bad_threshold():
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros(1, 1, 7), conf_thres=1.5)


def test_increment_path(tmp_path):
    p = tmp_path / 'exp'
    assert increment_path(p) == p
    p.mkdir()
    assert increment_path(p) == tmp_path / 'exp2'
    (tmp_path / 'exp2').mkdir()
    (tmp_path / 'exp7').mkdir()
    assert increment_path(p) == tmp_path / 'exp8'
    assert increment_path(p, exist_ok=True) == p
    assert increment_path(tmp_path / 'x' / 'exp', mkdir=True).is_dir()


def test_check_img_size():
    assert check_img_size(640, 32) == 640
    assert check_img_size(100, 32) == 128
    assert check_img_size([100, 64], 32) == [128, 64]
