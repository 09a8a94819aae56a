"""Tests for utils/shapes.py: determinism, exact labels, COCO json usable by pycocotools, sample images."""
import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.shapes import NAMES, SAMPLE_SIZES, boxes_to_yolo, draw_sample, generate_shapes_dataset, make_sample_images


def test_draw_sample_deterministic():
    a = draw_sample(np.random.default_rng(7))
    b = draw_sample(np.random.default_rng(7))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    c = draw_sample(np.random.default_rng(8))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize('seed', range(8))
def test_boxes_tightly_match_drawn_pixels(seed):
    h, w = 256, 256
    img, boxes, inst = draw_sample(np.random.default_rng(seed), h, w)
    assert 1 <= len(boxes) <= 5
    for k, (c, x1, y1, x2, y2) in enumerate(boxes):
        colour = img[inst == k + 1][0]
        # bbox of all pixels with exactly the shape's colour, found from the image alone
        ys, xs = np.nonzero((img == colour).all(-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        bw, bh = x2 - x1, y2 - y1
        assert min(h, w) / 12 - 1 <= max(bw, bh) <= min(h, w) / 2.5 + 1  # side range
        box = (img[int(y1):int(y2), int(x1):int(x2)] == colour).all(-1)
        if c == 0:  # circle: square box, corners empty, centre filled
            assert bw == bh and not box[0, 0] and not box[-1, -1] and box[int(bh) // 2, int(bw) // 2]
        elif c == 1:  # axis-aligned rectangle fills its box
            assert box.all()
        else:  # upward triangle: narrow apex row, full base row
            assert box[0].sum() <= 3 and box[-1].all()


def test_boxes_to_yolo_round_trip():
    boxes = np.array([[2, 10, 20, 30, 60], [0, 0, 0, 256, 128]], float)
    text = boxes_to_yolo(boxes, h=128, w=256)
    rows = np.array([line.split() for line in text.splitlines()], float)
    assert rows.tolist() == [[2, 20 / 256, 40 / 128, 20 / 256, 40 / 128], [0, 0.5, 0.5, 1.0, 1.0]]
    assert boxes_to_yolo(np.zeros((0, 5)), 10, 10) == ''


def test_generate_dataset_deterministic_and_coco_json(tmp_path):
    a = generate_shapes_dataset(tmp_path / 'a', n_train=5, n_val=4, imgsz=128, seed=3)
    b = generate_shapes_dataset(tmp_path / 'b', n_train=5, n_val=4, imgsz=128, seed=3)
    files_a = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 9 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert sorted(p.name for p in (a / 'images' / 'val').iterdir()) == ['000006.jpg', '000007.jpg', '000008.jpg',
                                                                        '000009.jpg']
    assert not list(tmp_path.glob('*.partial-*'))

    gt = json.loads((a / 'annotations' / 'instances_val.json').read_text())
    assert [c['id'] for c in gt['categories']] == list(NAMES)
    assert [im['id'] for im in gt['images']] == [6, 7, 8, 9]
    n_lines = sum(len((a / 'labels' / 'val' / f'{i:06d}.txt').read_text().splitlines()) for i in range(6, 10))
    assert len(gt['annotations']) == n_lines and min(x['id'] for x in gt['annotations']) == 1
    # json boxes agree with the YOLO label files
    for ann in gt['annotations']:
        x, y, w, h = ann['bbox']
        rows = np.loadtxt(a / 'labels' / 'val' / f"{ann['image_id']:06d}.txt", ndmin=2)
        expect = [ann['category_id'], (x + w / 2) / 128, (y + h / 2) / 128, w / 128, h / 128]
        assert np.abs(rows - expect).max(1).min() < 1e-5
        assert 0 < ann['area'] <= w * h

    # pycocotools: the ground truth scored against itself gives AP 1.0
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(a / 'annotations' / 'instances_val.json'))
        dets = [{'image_id': x['image_id'], 'category_id': x['category_id'], 'bbox': x['bbox'], 'score': 0.9}
                for x in gt['annotations']]
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


def test_generated_images_decode_with_labels_in_range(tmp_path):
    root = generate_shapes_dataset(tmp_path / 's', n_train=3, n_val=1, imgsz=96, seed=0)
    for f in (root / 'images' / 'train').iterdir():
        im = cv2.imread(str(f))
        assert im.shape == (96, 96, 3)
        lb = np.loadtxt(root / 'labels' / 'train' / f.with_suffix('.txt').name, ndmin=2)
        assert lb.shape[1] == 5 and (lb[:, 1:] > 0).all() and (lb[:, 1:] <= 1).all()
        assert set(lb[:, 0].astype(int)) <= set(NAMES)


def test_sample_images(tmp_path):
    files = make_sample_images(tmp_path)
    assert [f.name for f in files] == ['shapes_1.jpg', 'shapes_2.jpg', 'shapes_3.jpg']
    for f, hw in zip(files, SAMPLE_SIZES):
        assert cv2.imread(str(f)).shape[:2] == hw
        assert f.stat().st_size < 50_000
    # the committed copies in data/images are what this function makes
    repo = Path(__file__).resolve().parents[1] / 'data' / 'images'
    for f in files:
        assert (repo / f.name).read_bytes() == f.read_bytes()
