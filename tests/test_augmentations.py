"""Tests for utils/augmentations.py: letterbox golden shapes/padding, HSV, box filtering, perspective."""
import random

import numpy as np
import pytest

from utils.augmentations import augment_hsv, box_candidates, letterbox, mixup, random_perspective


def _img(h, w, value=0):
    return np.full((h, w, 3), value, np.uint8)


@pytest.mark.parametrize('hw, new_shape, kw, out_hw, ratio, pad', [
    ((480, 640), 640, dict(auto=False), (640, 640), (1.0, 1.0), (0.0, 80.0)),
    ((480, 640), 640, dict(auto=True), (480, 640), (1.0, 1.0), (0.0, 0.0)),  # 160 % 32 == 0
    ((300, 500), 640, dict(auto=True), (384, 640), (1.28, 1.28), (0.0, 0.0)),  # 384 = 300*1.28, 256 % 32 = 0
    ((300, 500), 640, dict(auto=False), (640, 640), (1.28, 1.28), (0.0, 128.0)),
    ((100, 100), 256, dict(auto=False, scaleup=False), (256, 256), (1.0, 1.0), (78.0, 78.0)),
    ((100, 200), 256, dict(auto=False, scaleFill=True), (256, 256), (1.28, 2.56), (0.0, 0.0)),
    ((200, 100), (160, 192), dict(auto=False, scaleup=False), (160, 192), (0.8, 0.8), (56.0, 0.0)),
    ((90, 130), 128, dict(auto=True, stride=32), (96, 128), (128 / 130, 128 / 130), (0.0, 3.5)),  # 89 -> 96
])
def test_letterbox_golden(hw, new_shape, kw, out_hw, ratio, pad):
    im, r, p = letterbox(_img(*hw, value=7), new_shape, **kw)
    assert im.shape[:2] == out_hw
    assert r == pytest.approx(ratio)
    assert p == pytest.approx(pad)


def test_letterbox_odd_padding_goes_bottom_right():
    # 101x200 -> r = 1.28 -> 129x256 image, 127 rows of padding: 63 on top, 64 below
    im, r, (dw, dh) = letterbox(_img(101, 200), 256, auto=False)
    assert (dw, dh) == (0.0, 63.5)
    assert im.shape == (256, 256, 3)
    assert (im[62] == 114).all() and (im[63] == 0).all()
    assert (im[191] == 0).all() and (im[192] == 114).all()


def test_augment_hsv_zero_gain_is_identity_and_grey_stays_grey():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ref = im.copy()
    augment_hsv(im, 0, 0, 0)
    assert (im == ref).all()
    grey = np.repeat(rng.integers(0, 256, (32, 48, 1), dtype=np.uint8), 3, axis=2)
    np.random.seed(1)
    augment_hsv(grey, hgain=0.0, sgain=0.0, vgain=0.5)  # value only: grey pixels stay grey
    assert grey.dtype == np.uint8 and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    np.random.seed(2)
    im2 = ref.copy()
    augment_hsv(im2, 0.015, 0.7, 0.4)
    assert im2.shape == ref.shape and (im2 != ref).any()


def test_box_candidates_golden():
    before = np.array([[0, 0, 10, 10]] * 5, float).T
    after = np.array([[0, 0, 10, 10],      # unchanged: kept
                      [0, 0, 2, 10],       # 2 px wide: not > wh_thr=2
                      [0, 0, 3, 3],        # 9% of the area left: < 10%
                      [0, 0, 500, 4],      # aspect ratio 125 > 100
                      [0, 0, 4, 4]], float).T  # 16% of the area: kept
    assert box_candidates(before, after).tolist() == [True, False, False, False, True]


def test_random_perspective_identity():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    t = np.array([[1, 10, 12, 40, 50], [2, 0, 0, 96, 64]], np.float32)
    out, t2 = random_perspective(im.copy(), t.copy(), degrees=0, translate=0, scale=0, shear=0, perspective=0)
    assert (out == im).all()
    assert np.allclose(t2, t)


@pytest.mark.parametrize('seed', range(4))
def test_random_perspective_boxes_follow_pixels(seed):
    # one white rectangle on black; after a random affine its label must still enclose the white pixels
    im = np.zeros((128, 128, 3), np.uint8)
    im[40:80, 30:90] = 255
    t = np.array([[0, 30, 40, 90, 80]], np.float32)
    random.seed(seed)
    out, t2 = random_perspective(im, t, degrees=20, translate=0.1, scale=0.3, shear=5, perspective=0.0)
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert len(t2) == 1
    x1, y1, x2, y2 = t2[0, 1:]
    assert abs(xs.min() - x1) <= 2 and abs(ys.min() - y1) <= 2
    assert abs(xs.max() + 1 - x2) <= 2 and abs(ys.max() + 1 - y2) <= 2


def test_random_perspective_drops_boxes_pushed_out():
    im = np.zeros((100, 100, 3), np.uint8)
    t = np.array([[0, 0, 0, 10, 10], [1, 40, 40, 60, 60]], np.float32)
    random.seed(0)
    # border -50 crops the centre 0..100 of a 200x200 canvas; shift so the corner box leaves the image
    out, t2 = random_perspective(np.zeros((200, 200, 3), np.uint8), t + [0, 50, 50, 50, 50], degrees=0,
                                 translate=0, scale=0, shear=0, border=(-50, -50))
    assert out.shape == (100, 100, 3)
    assert t2[:, 0].tolist() == [0, 1]  # both still inside after the crop
    assert np.allclose(t2[:, 1:], t[:, 1:])
    out, t3 = random_perspective(im, t, degrees=0, translate=0, scale=0, shear=0, border=(-20, -20))
    assert out.shape == (60, 60, 3)
    assert t3[:, 0].tolist() == [1]  # the corner box was cropped away entirely


def test_mixup_keeps_both_label_sets():
    np.random.seed(0)
    a, b = _img(32, 32, 0), _img(32, 32, 200)
    im, lb = mixup(a, np.ones((2, 5)), b, np.zeros((3, 5)))
    assert im.shape == a.shape and im.dtype == np.uint8 and len(lb) == 5
    assert 60 < im.mean() < 140  # Beta(32, 32) ratio is close to 0.5
