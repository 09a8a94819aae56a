"""The embedded "shapes" data set: synthetic images generated offline, deterministically.

Each image is blurred grey noise with 1-5 non-overlapping filled shapes in random colours:
class 0 circle, 1 axis-aligned rectangle, 2 upward-pointing triangle, sides 1/12 to 1/2.5 of the
shorter image side (what the upstream v7.0 fixture model under shared/fixtures was trained on).
Labels are exact: the tight box of the drawn pixels. Layout (YOLO format plus a COCO json)::

    root/images/{train,val}/000001.jpg ...    numeric stems, unique over both splits
    root/labels/{train,val}/000001.txt        "cls xc yc w h" normalized
    root/annotations/instances_val.json       COCO: image id = int(stem), category id = class index 0..2,
                                              bbox [x, y, w, h] pixels from the top-left corner

Box convention: a shape covering pixel columns x_min..x_max has x1 = x_min, x2 = x_max + 1 (pixel edges).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

NAMES = {0: 'circle', 1: 'rectangle', 2: 'triangle'}
SIZE_RANGE = (1 / 12, 1 / 2.5)  # shape side as a fraction of the shorter image side
MAX_SHAPES = 5


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blurred grey noise, (h, w, 3) uint8, mean grey level drawn per image."""
    level = rng.uniform(60, 200)
    noise = rng.normal(level, 40, size=(h, w)).astype(np.float32)
    grey = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.0)
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """A (h, w) uint8 mask with one shape of class ``cls`` at a random place (1 = shape)."""
    lo, hi = (f * min(h, w) for f in SIZE_RANGE)
    mask = np.zeros((h, w), np.uint8)
    if cls == 0:  # circle, diameter in range
        r = int(round(rng.uniform(lo, hi) / 2))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        cv2.circle(mask, (cx, cy), r, 1, thickness=-1)
    else:
        bw, bh = int(round(rng.uniform(lo, hi))), int(round(rng.uniform(lo, hi)))
        x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        x2, y2 = x1 + bw - 1, y1 + bh - 1  # inclusive pixel coordinates
        if cls == 1:
            mask[y1:y2 + 1, x1:x2 + 1] = 1
        else:  # upward triangle: apex at the top centre, base along the bottom
            pts = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], np.int32)
            cv2.fillPoly(mask, [pts], 1)
    return mask


def _colour(rng: np.random.Generator, grey: float) -> tuple[int, int, int]:
    """A random BGR colour that stands out from a background of mean level ``grey``."""
    while True:
        c = rng.integers(0, 256, size=3)
        if np.abs(c - grey).sum() > 90:
            return tuple(int(v) for v in c)


def draw_sample(rng: np.random.Generator, h: int = 256, w: int = 256
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image: returns (BGR uint8 (h, w, 3), boxes (n, 5) [cls, x1, y1, x2, y2] pixel edges,
    instance map (h, w) int with k+1 where shape k was drawn, 0 for background)."""
    img = _background(rng, h, w)
    grey = float(img.mean())
    inst = np.zeros((h, w), np.int32)
    occupied = np.zeros((h, w), bool)  # shapes plus a 2-pixel margin, so none touch
    boxes = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        for _try in range(20):
            cls = int(rng.integers(0, len(NAMES)))
            mask = _shape_mask(rng, cls, h, w).astype(bool)
            if not (mask & occupied).any():
                break
        else:
            continue  # no free place for this one
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        occupied[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
        img[mask] = _colour(rng, grey)
        inst[mask] = len(boxes) + 1
        boxes.append((cls, x1, y1, x2, y2))
    return img, np.array(boxes, np.float64).reshape(-1, 5), inst


def boxes_to_yolo(boxes: np.ndarray, h: int, w: int) -> str:
    """(n, 5) [cls, x1, y1, x2, y2] pixels -> label file text ``cls xc yc w h`` normalized, 6 decimals."""
    lines = []
    for c, x1, y1, x2, y2 in boxes:
        xc, yc, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f'{int(c)} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}')
    return '\n'.join(lines) + ('\n' if lines else '')


def generate_shapes_dataset(root: str | Path, n_train: int = 400, n_val: int = 100, imgsz: int = 256,
                            seed: int = 0, quality: int = 95) -> Path:
    """Write the shapes data set (layout in the module docstring) to ``root``; returns ``root``.

    Deterministic: the same arguments give byte-identical files. ``imgsz`` is the square side in pixels.
    Files are written to a temporary sibling folder first and moved into place at the end, so an
    interrupted run never leaves a half-made set behind that looks complete.
    """
    root = Path(root)
    tmp = root.with_name(f'{root.name}.partial-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    rng = np.random.default_rng(seed)
    coco = {'info': {'description': 'sparse-yolov5 synthetic shapes, val split'}, 'licenses': [],
            'images': [], 'annotations': [],
            'categories': [{'id': i, 'name': n, 'supercategory': 'shape'} for i, n in NAMES.items()]}
    image_id = 0
    for split, n in (('train', n_train), ('val', n_val)):
        (tmp / 'images' / split).mkdir(parents=True)
        (tmp / 'labels' / split).mkdir(parents=True)
        for _ in range(n):
            image_id += 1
            stem = f'{image_id:06d}'
            img, boxes, inst = draw_sample(rng, imgsz, imgsz)
            ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            (tmp / 'images' / split / f'{stem}.jpg').write_bytes(buf.tobytes())
            (tmp / 'labels' / split / f'{stem}.txt').write_text(boxes_to_yolo(boxes, imgsz, imgsz))
            if split == 'val':
                coco['images'].append({'id': image_id, 'file_name': f'{stem}.jpg', 'width': imgsz, 'height': imgsz})
                for k, (c, x1, y1, x2, y2) in enumerate(boxes):
                    coco['annotations'].append({
                        'id': len(coco['annotations']) + 1,  # COCOeval treats id 0 as "unmatched"
                        'image_id': image_id, 'category_id': int(c),
                        'bbox': [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        'area': int((inst == k + 1).sum()), 'iscrowd': 0})
    (tmp / 'annotations').mkdir()
    (tmp / 'annotations' / 'instances_val.json').write_text(json.dumps(coco))
    if root.exists():  # an incomplete earlier set: replace its files one by one
        shutil.copytree(tmp, root, dirs_exist_ok=True)
        shutil.rmtree(tmp)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first; its files are identical
            shutil.rmtree(tmp, ignore_errors=True)
    return root


SAMPLE_SIZES = ((256, 256), (240, 320), (320, 240))  # (h, w) of data/images/shapes_{1,2,3}.jpg


def make_sample_images(out_dir: str | Path = 'data/images', seed: int = 1234) -> list[Path]:
    """Write the detect.py sample images ``shapes_1.jpg``.. (sizes in SAMPLE_SIZES) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i, (h, w) in enumerate(SAMPLE_SIZES, 1):
        img, _, _ = draw_sample(rng, h, w)
        f = out_dir / f'shapes_{i}.jpg'
        cv2.imwrite(str(f), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        files.append(f)
    return files
