"""Tests for utils/plots.py: drawn pixels land where they should, files have the expected sizes."""

import cv2
import numpy as np
import pytest
import torch

from utils.plots import (Annotator, colors, feature_visualization, output_to_target, plot_images, plot_labels,
                         plot_results, save_one_box)


def test_colors_stable_bgr_and_wrapping():
    assert colors(3) == colors(3) == colors(23)  # 20-colour palette wraps
    assert colors(3, bgr=True) == colors(3)[::-1]
    assert len({colors(i) for i in range(20)}) == 20
    assert all(0 <= v <= 255 for i in range(20) for v in colors(i))


def test_annotator_draws_inside_box_region_only():
    im = np.zeros((100, 100, 3), dtype=np.uint8)
    ann = Annotator(im)
    assert ann.lw == 1  # small image: 1 px (upstream's minimum of 2 applies from 400 px)
    ann.box_label([20, 30, 60, 70], '', color=(0, 0, 255))
    out = ann.result()
    assert out is im  # contiguous input: drawn in place
    assert out[50, 20, 2] > 200 and out[30, 40, 2] > 200  # left and top edges are red
    assert out[50, 40].sum() == 0  # box interior untouched
    mask = out.sum(2) > 0
    mask[27:74, 17:64] = False  # box plus the line half-width and anti-aliasing
    assert not mask.any()


def test_annotator_label_tab_above_box_and_line_width_default():
    im = np.zeros((1000, 1000, 3), dtype=np.uint8)
    ann = Annotator(im)
    assert ann.lw == 3  # round(2003 / 2 * 0.003) = round(3.0045)
    ann.box_label([100, 200, 300, 400], 'person 0.9', color=(255, 0, 0))
    tab = im[150:197, 100:300]  # label tab sits above the top edge
    assert (tab[..., 0] == 255).sum() > 500 and (tab == 255).all(2).any()  # blue fill with white text
    ann.text([500, 500], 'hi', txt_color=(0, 255, 0))
    assert im[500:540, 500:560, 1].max() > 200



def ink(im: np.ndarray) -> np.ndarray:
    """Pixels touched by the white text on a blue (BGR) tab over a black image: the only ones with green."""
    return im[..., 1] > 0


@pytest.mark.parametrize('box', [[200, 100, 255, 150],  # at the right edge: the tab would run off it
                                 [30, 0, 90, 60],  # at the top edge: no room above, the tab goes inside
                                 [-10, -10, 300, 300]])  # bigger than the image
def test_annotator_keeps_labels_inside_small_image(box):
    """On a 256 px image the whole label is drawn: the same text pixels as well inside the image, all within the
    tab that label_rect reports, which lies inside the image."""
    label = 'rectangle 0.87'
    ref = np.zeros((256, 256, 3), dtype=np.uint8)
    Annotator(ref).box_label([60, 120, 120, 180], label, color=(255, 0, 0))
    im = np.zeros((256, 256, 3), dtype=np.uint8)
    ann = Annotator(im)
    (x1, y1, x2, y2), _, _ = ann.label_rect(box, label)
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
    ann.box_label(box, label, color=(255, 0, 0))
    assert ink(im).sum() == ink(ref).sum() > 50  # nothing of the text clipped
    outside = ink(im).copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()
    if box[1] == 0:
        assert y1 == 0 and x1 == 30  # inside the box top, at its left edge
    if box[2] == 255:
        assert x2 == 256 and x1 < 200  # shifted left


def test_annotator_label_wider_than_image_gets_smaller_font():
    im = np.zeros((40, 60, 3), dtype=np.uint8)
    (x1, y1, x2, y2), _, scale = Annotator(im).label_rect([0, 20, 30, 39], 'a very long class name 0.99')
    assert x1 == 0 and 0 <= y1 < y2 == 20 and x2 <= 60 and scale < Annotator(im)._font()[0]  # above the box


def test_annotator_line_width_and_font_grow_with_image_size():
    sizes = (100, 256, 640, 1280, 2560)
    lw = [Annotator(np.zeros((s, s, 3), dtype=np.uint8)).lw for s in sizes]
    font = [Annotator(np.zeros((s, s, 3), dtype=np.uint8))._font()[0] for s in sizes]
    assert lw == [1, 1, 2, 4, 8]  # upstream's max(round(s * 0.003), 2) from 400 px
    assert font[1] < font[2] < font[3] < font[4] and font[0] == font[1] == 0.35
    h_small = cv2.getTextSize('person', cv2.FONT_HERSHEY_SIMPLEX, font[1], 1)[0][1]
    assert 7 <= h_small <= 10  # small but readable letters at 256 px
    # detect.py passes --line-thickness 3 (upstream's default): kept on large images, thinner on small ones
    assert [Annotator(np.zeros((s, s, 3), dtype=np.uint8), line_width=3).lw for s in sizes] == [1, 1, 3, 3, 3]
    assert Annotator(np.zeros((480, 640, 3), dtype=np.uint8), line_width=3).lw == 3  # VGA, as upstream

def test_annotator_copies_non_contiguous_and_rejects_tensors():
    base = np.zeros((50, 50, 3), dtype=np.uint8)
    view = base[..., ::-1]  # not C-contiguous
    ann = Annotator(view, line_width=1)
    ann.rectangle([5, 5, 20, 20], outline=(255, 255, 255))
    assert ann.result().sum() > 0 and base.sum() == 0
    with pytest.raises(TypeError, match='numpy'):
        Annotator(torch.zeros(3, 50, 50))


def test_output_to_target_golden():
    out = [torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0]]),
           torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.8, 1.0], [5.0, 5.0, 7.0, 9.0, 0.3, 0.0]])]
    t = output_to_target(out)
    assert isinstance(t, np.ndarray)
    np.testing.assert_allclose(t, [[0, 2, 20, 40, 20, 40, 0.9],
                                   [1, 1, 2, 1, 4, 2, 0.8],
                                   [1, 0, 6, 7, 2, 4, 0.3]], rtol=1e-6)
    assert output_to_target(out, max_det=1).shape == (2, 7)
    assert output_to_target([torch.zeros((0, 6))]).shape == (0, 7)


def _nearest_colour_distance(img, rgb):
    bgr = np.array(rgb[::-1], dtype=float)
    return np.abs(img.astype(float) - bgr).sum(2).min()


def test_plot_images_mosaic_boxes_and_conf(tmp_path):
    imgs = torch.zeros(3, 3, 32, 48, dtype=torch.uint8)  # 3 images -> 2x2 tiles of 32 x 48
    labels = torch.tensor([[1, 4, 0.5, 0.5, 0.5, 0.5]])  # image 1 (top right tile), normalised, class 4
    f = plot_images(imgs, labels, paths=['a/x.jpg'] * 3, fname=tmp_path / 'l.png', names={4: 'cat'})
    im = cv2.imread(str(f))
    assert im.shape == (64, 96, 3)
    assert _nearest_colour_distance(im[:32, 48:], colors(4)) < 30  # box drawn in tile 1
    assert _nearest_colour_distance(im[32:, :48], colors(4)) > 100  # not in tile 2
    assert (im[32:, 48:] == 255).all()  # 4th tile is empty white

    # predictions: conf 0.1 is not drawn, conf 0.9 is; pixel boxes and a 0-1 float batch
    imgs01 = torch.zeros(1, 3, 64, 64)
    blank = cv2.imread(str(plot_images(imgs01, np.zeros((0, 7)), fname=tmp_path / 'b.png')))
    low = cv2.imread(str(plot_images(imgs01, np.array([[0, 2, 32, 32, 20, 20, 0.1]]), fname=tmp_path / 'p1.png')))
    high = cv2.imread(str(plot_images(imgs01, np.array([[0, 2, 32, 32, 20, 20, 0.9]]), fname=tmp_path / 'p9.png')))
    assert (low == blank).all() and (high != blank).any()
    assert _nearest_colour_distance(high, colors(2)) < 30


def test_plot_images_downscales_to_max_size(tmp_path):
    imgs = np.full((4, 3, 64, 64), 128, dtype=np.uint8)
    f = plot_images(imgs, np.array([[3, 0, 40, 40, 16, 16]]), fname=tmp_path / 'm.jpg', max_size=64)
    im = cv2.imread(str(f))
    assert im.shape == (64, 64, 3)  # 2x2 tiles scaled by 64 / 2 / 64 = 0.5
    assert _nearest_colour_distance(im[32:, 32:], colors(0)) < 60  # pixel box scaled into tile 3 (JPEG)


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 3, (40, 1)), rng.uniform(0.1, 0.9, (40, 4))], 1)
    f = plot_labels(labels, names={0: 'circle', 1: 'rectangle', 2: 'triangle'}, save_dir=tmp_path)
    im = cv2.imread(str(f))
    assert f.name == 'labels.jpg' and im.shape == (1600, 1600, 3)  # 8 in x 200 dpi
    assert labels[:, 1].min() > 0.09  # caller's array untouched (upstream overwrote it)


def _write_results(path, extra=False):
    cols = ['epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
            'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'x/lr0',
            'x/lr1', 'x/lr2'] + (['sparsity'] if extra else [])
    lines = [','.join('%20s' % c for c in cols)]  # upstream right-aligns names with spaces
    for e in range(5):
        lines.append(','.join('%20.5g' % v for v in [e] + [0.1 * (e + 1) + k * 0.01 for k in range(len(cols) - 1)]))
    path.write_text('\n'.join(lines) + '\n')


def test_plot_results_grid_and_extra_row(tmp_path):
    _write_results(tmp_path / 'results.csv')
    f = plot_results(tmp_path / 'results.csv')
    assert f == tmp_path / 'results.png'
    assert cv2.imread(str(f)).shape == (1200, 2400, 3)  # 2 rows: 12 x 6 in at 200 dpi

    d2 = tmp_path / 'sparse'
    d2.mkdir()
    _write_results(d2 / 'results.csv', extra=True)
    f = plot_results(file='', dir=d2)
    assert cv2.imread(str(f)).shape == (1800, 2400, 3)  # one extra row for 'sparsity'

    with pytest.raises(FileNotFoundError, match='results'):
        plot_results(tmp_path / 'empty' / 'results.csv')


def test_save_one_box(tmp_path):
    im = np.zeros((100, 200, 3), dtype=np.uint8)
    im[..., 0] = 255  # blue in BGR
    # box 40 x 40 centred (70, 40): side 40 * 1.02 + 10 = 50.8 -> x 44.6..95.4, y 14.6..65.4 -> truncated to ints
    file = tmp_path / 'crops' / 'cat' / 'im.jpg'
    crop = save_one_box([50, 20, 90, 60], im, file=file, BGR=True)
    assert crop.shape == (51, 51, 3) and crop[..., 0].min() == 255
    rgb = save_one_box([50, 20, 90, 60], im, file=file, BGR=False)
    assert rgb[..., 2].min() == 255 and rgb[..., 0].max() == 0
    assert file.exists() and (file.parent / 'im2.jpg').exists()  # second save does not overwrite
    saved = cv2.imread(str(file))
    assert saved.shape == (51, 51, 3) and saved[..., 0].mean() > 240  # stored as the real (blue) colours
    # clipped at the image border, square crop from the longest side
    crop = save_one_box([0, 0, 30, 10], im, square=True, save=False)
    assert crop.shape == (25, 35, 3)  # side 30 * 1.02 + 10 = 40.6 about centre (15, 5) -> 0..35 x 0..25


def test_feature_visualization(tmp_path):
    x = torch.rand(1, 10, 8, 8)
    f = feature_visualization(x, 'models.common.C3', stage=2, n=32, save_dir=tmp_path)
    assert f == tmp_path / 'stage2_C3_features.png' and f.stat().st_size > 0
    assert np.load(tmp_path / 'stage2_C3_features.npy').shape == (10, 8, 8)
    assert feature_visualization(x, 'models.yolo.Detect', stage=24, save_dir=tmp_path) is None
