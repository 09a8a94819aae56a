"""YOLO-format labels: verification of every image and label file, the label cache, class and image weights.

Label checks: an image with a label file that cannot be used (see _read_labels: wrong column count, a
non-numeric or non-finite value, a class id that is not a whole number in [0, nc), a coordinate outside
[0, 1], unreadable bytes, a folder in place of the file) is skipped and counted as corrupt, with the reason
in a warning, as is an unreadable image. train.py, val.py (and so compare.py and the sparsity sweep) pass the
data yaml's nc, also with --single-cls: a class id >= the yaml's nc is a broken label whatever the class
count of the model, and single-cls only merges the valid classes into class 0 after the check.

Label cache: after verifying every image and label once, the results are written next to the labels
folder (``labels/train.cache`` for ``images/train``, ``train.cache`` for a ``train.txt`` list), as an
``np.savez`` archive of plain arrays read back with ``allow_pickle=False`` (so a cache file can never run
code; upstream's pickled caches at the same place are recognised as foreign and rebuilt). The cache is
rebuilt when its version or the hash of (file paths, sizes, modification times, nc, cache version)
differs, so a verdict made under another nc, or by the laxer checks of an older version, is never reused.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from itertools import repeat
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.general import LOGGER, segments2boxes

IMG_FORMATS = 'bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm'  # upstream list
# change when verification rules or the cache layout change; 2: non-finite values, class ids >= nc, label folders
CACHE_VERSION = 'sparse-yolov5-labels-2'
# per-image verification outcome codes (stored in the cache)
OK, MISSING, EMPTY, CORRUPT = 0, 1, 2, 3


def img2label_paths(img_paths: list[str]) -> list[str]:
    """Label file of each image: the last ``/images/`` in the path becomes ``/labels/``, suffix ``.txt``."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return [sb.join(x.rsplit(sa, 1)).rsplit('.', 1)[0] + '.txt' for x in img_paths]


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) pixels after the EXIF orientation is applied (as cv2.imread does)."""
    w, h = img.size
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated 90 or 270 degrees
            w, h = h, w
    except Exception:  # unreadable EXIF: keep the stored size
        pass
    return w, h


class _BadLabel(ValueError):
    """A label file that cannot be used (message says why)."""


def _read_labels(lb_file: str, nc: int | None) -> tuple[np.ndarray, int]:
    """Parse and check one label file; returns ((n, 5) float32 [cls xc yc w h], duplicates removed).

    Raises _BadLabel (or OSError, UnicodeDecodeError, ...) for a file that cannot be used: a row that is not
    ``cls xc yc w h`` (or a polygon ``cls x1 y1 x2 y2 ...``), a non-finite value (nan, inf, or too large for
    float32), a class id that is not a whole number in [0, nc) (upper bound only when ``nc`` is given), or a
    coordinate outside [0, 1].
    """
    boxes = []
    for line in Path(lb_file).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            v = [float(x) for x in parts]
        except ValueError:
            raise _BadLabel(f'non-numeric value in line "{line.strip()}"') from None
        with np.errstate(over='ignore', invalid='ignore'):  # values beyond float32 become inf: refused below
            if len(v) == 5:
                row = np.array(v, np.float32)
            elif len(v) >= 7 and len(v) % 2 == 1:  # polygon "cls x1 y1 x2 y2 ..." -> its enclosing box
                xy = np.array(v[1:], np.float32).reshape(-1, 2)
                row = np.array([v[0], *segments2boxes([xy])[0]], np.float32)
            else:
                raise _BadLabel(f'{len(v)} columns in line "{line.strip()}", need 5: cls xc yc w h')
        if not (np.isfinite(v).all() and np.isfinite(row).all()):
            raise _BadLabel(f'non-finite value (nan, inf or beyond float32) in line "{line.strip()}"')
        boxes.append(row)
    lb = np.array(boxes, np.float32).reshape(-1, 5)
    cls = lb[:, 0]
    bad = (cls < 0) | (cls != np.round(cls))
    if bad.any():
        raise _BadLabel(f'class id {cls[bad][0]:g} is not a whole number >= 0')
    if nc is not None and (cls >= nc).any():
        raise _BadLabel(f'class id {int(cls.max())} >= nc={nc} of the data yaml (class ids are 0-{nc - 1})')
    if (lb[:, 1:] < 0).any():
        raise _BadLabel(f'negative coordinates {lb[:, 1:][lb[:, 1:] < 0]}')
    if (lb[:, 1:] > 1).any():
        raise _BadLabel(f'coordinates > 1, not normalized or outside the image {lb[:, 1:][lb[:, 1:] > 1]}')
    _, keep = np.unique(lb, axis=0, return_index=True)
    ndup = len(lb) - len(keep)
    return lb[np.sort(keep)], ndup


def verify_image_label(im_file: str, lb_file: str, nc: int | None = None,
                       prefix: str = '') -> tuple[str, np.ndarray, tuple[int, int], int, int, str]:
    """Check one image and its label file without raising.

    Returns (im_file, labels (n, 5) [cls xc yc w h] normalized, (width, height) pixels, status code
    OK/MISSING/EMPTY/CORRUPT, duplicate rows removed, warning message or '').
    """
    no_labels = np.zeros((0, 5), np.float32)
    try:
        with Image.open(im_file) as im:
            im.verify()  # cheap integrity check, no full decode; must come right after open
            shape = exif_size(im)
            fmt = (im.format or '').lower()
        if fmt not in IMG_FORMATS:
            raise ValueError(f'unsupported image format {fmt or "unknown"}')
        if shape[0] < 10 or shape[1] < 10:
            raise ValueError(f'image size {shape[0]}x{shape[1]} < 10 pixels')
        msg = ''
        if fmt == 'jpeg':
            with open(im_file, 'rb') as f:
                f.seek(-2, 2)
                eoi = f.read() == b'\xff\xd9'
            if not eoi:  # no end marker: truncated, or trailing bytes after it; a full decode tells which
                with Image.open(im_file) as im:
                    im.load()
                msg = f'{prefix}WARNING ⚠️ {im_file}: JPEG without end marker, decodes fine, kept'
        elif fmt != 'png':  # verify() checks PNG chunk CRCs but reads no pixels of BMP/TIFF/WebP...: decode once
            with Image.open(im_file) as im:  # (a truncated BMP passes verify(), then cv2.imread fails in training)
                im.load()
    except Exception as e:
        return im_file, no_labels, (0, 0), CORRUPT, 0, f'{prefix}WARNING ⚠️ {im_file}: ignoring corrupt image: {e}'
    if not os.path.exists(lb_file):  # a folder or other non-file at that path is a corrupt label, read below
        return im_file, no_labels, shape, MISSING, 0, msg
    try:
        lb, ndup = _read_labels(lb_file, nc)
    except Exception as e:  # whatever a file holds, the scan goes on: one bad file is skipped, not fatal
        return im_file, no_labels, shape, CORRUPT, 0, f'{prefix}WARNING ⚠️ {lb_file}: ignoring corrupt label: {e}'
    if ndup:
        msg = f'{prefix}WARNING ⚠️ {lb_file}: {ndup} duplicate labels removed'
    return im_file, lb, shape, (OK if len(lb) else EMPTY), ndup, msg


def get_hash(files: list[str], extra: str = '') -> str:
    """MD5 over paths, sizes and modification times of ``files`` (missing ones count as absent) plus ``extra``."""
    h = hashlib.md5(extra.encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f'{f}:{st.st_size}:{st.st_mtime_ns};'.encode())
        except OSError:
            h.update(f'{f}:-;'.encode())
    return h.hexdigest()


def num_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1) - 1))


def _load_cache(path: Path, hash_: str) -> dict[str, np.ndarray] | None:
    """The cache's arrays when it is ours, current and readable; None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z['version']) != CACHE_VERSION or str(z['hash']) != hash_:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _save_cache(path: Path, arrays: dict[str, np.ndarray], prefix: str = '') -> None:
    tmp = path.with_name(path.name + f'.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        LOGGER.info(f'{prefix}New cache created: {path}')
    except OSError as e:
        LOGGER.warning(f'{prefix}WARNING ⚠️ cache directory {path.parent} is not writeable: {e}')
        tmp.unlink(missing_ok=True)


def scan_labels(im_files: list[str], label_files: list[str], cache_path: Path, nc: int | None = None,
                prefix: str = '') -> tuple[dict[str, np.ndarray], bool]:
    """Verify all images and labels (in threads), or reuse a valid cache; returns (arrays, from_cache).

    Arrays: ``im_files``, ``status`` (codes), ``shapes`` (n, 2) wh pixels, ``n_labels`` (n,), ``labels``
    (sum n_labels, 5) concatenated, ``msgs``, ``ndup``, ``hash``, ``version``.
    """
    hash_ = get_hash(label_files + im_files, extra=f'{CACHE_VERSION};nc={nc}')  # a verdict holds for one nc
    cached = _load_cache(cache_path, hash_)
    if cached is not None:
        return cached, True
    n = len(im_files)
    status, shapes, n_labels, labels, msgs, ndup = np.zeros(n, np.uint8), np.zeros((n, 2), np.int64), \
        np.zeros(n, np.int64), [], [], 0
    desc = f'{prefix}Scanning {cache_path.parent / cache_path.stem}...'
    with ThreadPool(num_threads()) as pool:
        results = pool.imap(lambda a: verify_image_label(*a), zip(im_files, label_files, repeat(nc), repeat(prefix)))
        for i, (_, lb, shape, code, nd, msg) in enumerate(tqdm(results, desc=desc, total=n, disable=n < 1000,
                                                                leave=False)):
            status[i], shapes[i], n_labels[i] = code, shape, len(lb)
            labels.append(lb)
            ndup += nd
            if msg:
                msgs.append(msg)
    arrays = {'version': np.array(CACHE_VERSION), 'hash': np.array(hash_), 'im_files': np.array(im_files),
              'status': status, 'shapes': shapes, 'n_labels': n_labels,
              'labels': np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
              'msgs': np.array(msgs, dtype=str), 'ndup': np.array(ndup)}
    _save_cache(cache_path, arrays, prefix)
    return arrays, False


# ---------------------------------------------------------------- class / image weights
def labels_to_class_weights(labels: list[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequency over all labels, normalized to sum 1, (nc,) float (absent classes count as 1)."""
    if not labels:
        return torch.Tensor()
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(np.float64)
    weights[weights == 0] = 1
    weights = 1 / weights
    weights /= weights.sum()
    return torch.from_numpy(weights).float()


def labels_to_image_weights(labels: list[np.ndarray], nc: int = 80,
                            class_weights: np.ndarray | None = None) -> np.ndarray:
    """Per-image weight = sum over its objects of their class weight, (n_images,)."""
    cw = np.ones(nc) if class_weights is None else np.asarray(class_weights, np.float64).reshape(nc)
    counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in labels]).reshape(-1, nc)
    return counts @ cw
