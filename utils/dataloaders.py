"""Data sets and loaders: data yaml checks, YOLO-format label verification + cache, training/val loaders,
and the image/video/stream sources used by detect.py.

YOLO format: every image ``.../images/<split>/name.jpg`` has a label file ``.../labels/<split>/name.txt``
with one object per line, ``cls xc yc w h``, coordinates normalized to 0-1 by the image width/height.
A missing or empty label file means a background image.

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

import glob
import hashlib
import math
import os
import random
import time
import zipfile
from itertools import repeat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from threading import Thread
from typing import Any, Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, distributed
from tqdm import tqdm

from utils.augmentations import augment_hsv, letterbox, mixup, random_perspective
from utils.downloads import MARKERS, DownloadError, dataset_zips, download_dataset, installed, needed
from utils.general import LOGGER, ROOT, segments2boxes, xywhn2xyxy, xyxy2xywhn, yaml_load
from utils.shapes import generate_shapes_dataset

IMG_FORMATS = 'bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm'  # upstream list
VID_FORMATS = 'asf', 'avi', 'gif', 'm4v', 'mkv', 'mov', 'mp4', 'mpeg', 'mpg', 'ts', 'wmv'
# change when verification rules or the cache layout change; 2: non-finite values, class ids >= nc, label folders
CACHE_VERSION = 'sparse-yolov5-labels-2'
GENERATORS: dict[str, Callable[[Path], Path]] = {'shapes': generate_shapes_dataset}  # data yaml `generator:` key

# per-image verification outcome codes (stored in the cache)
OK, MISSING, EMPTY, CORRUPT = 0, 1, 2, 3


# ---------------------------------------------------------------- data yaml
def _find_yaml(file: str | Path) -> Path:
    """A data yaml as given, or by name from the repo's data/ folder."""
    p = Path(file)
    if p.suffix not in ('.yaml', '.yml'):
        raise ValueError(f"data must be a .yaml file or a dict, got '{file}'")
    for candidate in (p, ROOT / 'data' / p.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"data yaml '{file}' not found (looked in the working directory and {ROOT / 'data'})")


def _resolve(path: Path, x: str) -> str:
    """A split entry (folder, *.txt list or image) made absolute against the data set root ``path``."""
    p = (path / x).resolve()
    if not p.exists() and x.startswith('../'):  # upstream fallback for yamls written relative to the yaml
        p = (path / x[3:]).resolve()
    return str(p)


def check_dataset(data: str | Path | dict, autogenerate: bool = True, autodownload: bool = True,
                  splits: tuple[str, ...] = ('val',)) -> dict:
    """Read and check a data yaml (or dict); return it with absolute paths and ``names`` as {index: name}.

    Paths: ``path`` (the data set root) is used as is when absolute, otherwise relative to the repo root
    (upstream's rule; this repo's yamls use ``datasets/<name>``, a gitignored folder in the repo).
    ``train``/``val``/``test`` (a folder, a *.txt list or a list of those) are relative to ``path``.
    ``nc`` is optional and must equal the number of names. A set marked ``generator: <name>`` (see
    GENERATORS) is generated offline when its files are missing. A set whose ``splits`` are missing (or that a
    download left incomplete) is downloaded when its ``download:`` lists zip archives (utils.downloads: data,
    never executed; ``autodownload=False`` skips it); otherwise FileNotFoundError with the ``download`` text as
    a hint (never executed). A failed download raises DownloadError (one line).
    """
    src = str(data) if isinstance(data, (str, Path)) else 'data dict'
    if isinstance(data, (str, Path)):
        data = yaml_load(_find_yaml(data))
    if not isinstance(data, dict):
        raise ValueError(f'{src}: expected a mapping of keys (path, train, val, names), got {type(data).__name__}')
    data = dict(data)
    for k in ('train', 'val', 'names'):
        if k not in data:
            raise ValueError(f"{src}: '{k}:' key missing; a data yaml needs train, val and names")

    names = data['names']
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not all(isinstance(k, int) for k in names) \
            or sorted(names) != list(range(len(names))):
        raise ValueError(f'{src}: names must be a list or a dict {{0: name0, 1: name1, ...}} with keys 0..nc-1')
    data['names'] = {int(k): str(v) for k, v in sorted(names.items())}
    if data.get('nc') is not None and int(data['nc']) != len(names):
        raise ValueError(f"{src}: nc={data['nc']} but {len(names)} names are given; they must match")
    data['nc'] = len(names)

    path = Path(data.get('path') or '')
    if not path.is_absolute():
        path = (ROOT / path).resolve()
    data['path'] = str(path)
    for k in ('train', 'val', 'test'):
        x = data.get(k)
        if x:
            data[k] = _resolve(path, x) if isinstance(x, str) else [_resolve(path, str(y)) for y in x]
        else:
            data[k] = None
    if data.get('coco_json'):  # COCO-style annotations of the val split, used for pycocotools mAP
        data['coco_json'] = _resolve(path, data['coco_json'])

    def missing(keys: tuple[str, ...]) -> list[str]:
        out = []
        for k in keys:
            x = data[k]
            out += [p for p in ([x] if isinstance(x, str) else x or []) if not Path(p).exists()]
        return out

    generator = data.get('generator')
    if generator is not None:
        if generator not in GENERATORS:
            raise ValueError(f"{src}: unknown generator '{generator}', known: {', '.join(GENERATORS)}")
        if missing(('train', 'val')):
            if not autogenerate:
                raise FileNotFoundError(f'{src}: data set missing at {path}; run with autogenerate=True to make it')
            LOGGER.info(f"Generating the embedded '{generator}' data set in {path} ...")
            t = time.time()
            GENERATORS[generator](path)
            LOGGER.info(f'Done ({time.time() - t:.1f}s)')
    lost = missing(splits)
    dl = data.get('download')
    zips = dataset_zips(dl, path) if dl and (lost or (path / MARKERS).is_dir()) else None  # None: not a download
    if zips is not None:
        zips = needed(zips, splits)
        done = installed(zips, path)  # None: no download recorded (e.g. a set made by hand), judged by its files
        if (lost and not done) or done is False:
            what = f"not found: {', '.join(lost)} does not exist" if lost else \
                f'incomplete (a download into {path} did not finish)'
            if not autodownload:
                raise FileNotFoundError(f"Dataset {what}; to get it: {', '.join(z.url for z in zips)}")
            LOGGER.info(f'Dataset {what}; downloading the {len(zips)} archive(s) listed in {src}...')
            try:
                download_dataset(zips, path)
            except DownloadError as e:
                raise DownloadError(f"Dataset {what}, and {e} (the 'download:' of {src} lists what to fetch by hand)") \
                    from None
            lost = missing(splits)
    if lost:
        if zips:  # every archive is installed, yet the files are not there
            raise FileNotFoundError(f"Dataset not found: {', '.join(lost)} does not exist although "
                                    f"{', '.join(z.name for z in zips)} are recorded as installed in {path / MARKERS} "
                                    '(delete that folder to download them again)')
        if zips is not None:
            hint = f"; the 'download:' of {src} lists no archive for {'/'.join(splits)}"
        elif isinstance(dl, str) and dl.strip() and '\n' not in dl.strip():
            hint = f'; to get it: {dl.strip()}'
        elif dl:
            hint = f"; its 'download' script is not run by this project, get the data manually (see {src})"
        else:
            hint = ''
        raise FileNotFoundError(f"Dataset not found: {', '.join(lost)} does not exist{hint}")
    return data


# ---------------------------------------------------------------- label verification
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


def _num_threads() -> int:
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
    with ThreadPool(_num_threads()) as pool:
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


# ---------------------------------------------------------------- training / validation data set
class LoadImagesAndLabels(Dataset):
    """YOLO-format images + labels with verification, cache, rectangular batches and augmentation.

    Items are (image uint8 (3, h, w) RGB tensor, labels (n, 6) [0, cls, xc, yc, w, h] normalized,
    image path, shapes) where shapes = ((h0, w0), ((gain_h, gain_w), (pad_w, pad_h))) maps the item
    back to the original image (None for mosaic items).
    """

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, image_weights: bool = False,
                 cache_images: bool | str = False, single_cls: bool = False, stride: int = 32, pad: float = 0.0,
                 prefix: str = '', nc: int | None = None):
        if augment and hyp is None:
            raise ValueError('augment=True needs hyp (a hyperparameter dict, e.g. data/hyps/hyp.scratch-low.yaml)')
        self.img_size = img_size
        self.augment = augment
        self.hyp = hyp
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect  # 4-image mosaic only in (non-rect) training
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        self.path = path

        self.im_files = self._list_images(path, prefix)
        self.label_files = img2label_paths(self.im_files)
        first = Path(path[0] if isinstance(path, (list, tuple)) else path)
        cache_path = (first if first.is_file() else Path(self.label_files[0]).parent).with_suffix('.cache')
        arrays, from_cache = scan_labels(self.im_files, self.label_files, cache_path, nc, prefix)

        status = arrays['status']
        counts = {k: int((status == c).sum()) for k, c in
                  (('found', OK), ('missing', MISSING), ('empty', EMPTY), ('corrupt', CORRUPT))}
        self.stats = {**counts, 'duplicates': int(arrays['ndup']), 'total': len(status)}
        LOGGER.info(f"{prefix}Scanning {cache_path.parent / cache_path.stem}... {counts['found']} images, "
                    f"{counts['missing'] + counts['empty']} backgrounds, {counts['corrupt']} corrupt"
                    + (' (cache)' if from_cache else ''))
        for m in arrays['msgs']:
            LOGGER.warning(str(m))
        good = status != CORRUPT
        if not good.any():
            raise FileNotFoundError(f'{prefix}No usable images in {path}: all {len(status)} are corrupt (see warnings)')
        if augment and counts['found'] == 0:
            lb_dir = Path(self.label_files[0]).parent
            raise FileNotFoundError(f'{prefix}No labels found for {path} (expected in {lb_dir}), '
                                    'can not start training')

        splits = np.split(arrays['labels'], np.cumsum(arrays['n_labels'])[:-1])
        self.im_files = [str(f) for f, g in zip(arrays['im_files'], good) if g]
        self.labels = [lb.astype(np.float32) for lb, g in zip(splits, good) if g]
        self.shapes = arrays['shapes'][good].astype(np.int64)  # (n, 2) width, height
        self.label_files = img2label_paths(self.im_files)
        if single_cls:  # after the check against the data's nc: a class id >= nc stays a corrupt label
            for lb in self.labels:
                lb[:, 0] = 0
        n = len(self.im_files)
        self.n = n
        self.batch = np.floor(np.arange(n) / batch_size).astype(int)  # batch index of each image
        self.indices = np.arange(n)

        if self.rect:
            self._sort_rect(batch_size, pad)

        self.ims: list[np.ndarray | None] = [None] * n
        self.im_hw0: list[tuple[int, int] | None] = [None] * n
        self.im_hw: list[tuple[int, int] | None] = [None] * n
        self.npy_files = [Path(f).with_suffix('.npy') for f in self.im_files]
        if cache_images is True:
            cache_images = 'ram'
        if cache_images not in (False, None, 'ram', 'disk'):
            raise ValueError(f"cache must be 'ram', 'disk' or False, got '{cache_images}'")
        if cache_images == 'ram' and not self._ram_enough(prefix):
            cache_images = False
        if cache_images:
            self._cache(cache_images, prefix)

    @staticmethod
    def _list_images(path: str | Path | list, prefix: str) -> list[str]:
        """Image files from folders (recursive), *.txt lists (relative entries are relative to the list's
        folder, upstream's ``./images/...``) and single images."""
        files = []
        for p in path if isinstance(path, (list, tuple)) else [path]:
            p = Path(p)
            if p.is_dir():
                files += glob.glob(str(p / '**' / '*.*'), recursive=True)
            elif p.is_file() and p.suffix == '.txt':
                for x in p.read_text().splitlines():
                    x = x.strip()
                    if x:
                        files.append(x if os.path.isabs(x) else str(p.parent / x))
            elif p.is_file():
                files.append(str(p))
            else:
                raise FileNotFoundError(f'{prefix}{p} does not exist')
        im_files = sorted(os.path.normpath(x) for x in files if x.rsplit('.', 1)[-1].lower() in IMG_FORMATS)
        if not im_files:
            raise FileNotFoundError(f'{prefix}No images found in {path} (formats: {", ".join(IMG_FORMATS)})')
        return im_files

    def _sort_rect(self, batch_size: int, pad: float) -> None:
        """Order images by aspect ratio and give each batch the smallest stride-multiple shape that holds it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        irect = ar.argsort(kind='stable')
        self.im_files = [self.im_files[i] for i in irect]
        self.label_files = [self.label_files[i] for i in irect]
        self.labels = [self.labels[i] for i in irect]
        self.shapes = self.shapes[irect]
        ar = ar[irect]
        nb = self.batch[-1] + 1
        shapes = [[1, 1]] * nb  # (h, w) relative to img_size
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(np.array(shapes) * self.img_size / self.stride + pad).astype(int) * self.stride

    def _ram_enough(self, prefix: str, safety_margin: float = 0.1) -> bool:
        """Estimate from up to 30 images whether caching all of them fits in available RAM."""
        k = min(self.n, 30)
        b = sum(self.load_image(random.randrange(self.n))[0].nbytes for _ in range(k))
        need = b * self.n / k * (1 + safety_margin)
        try:
            avail = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (ValueError, OSError, AttributeError):
            return True
        if need > avail:
            LOGGER.warning(f'{prefix}WARNING ⚠️ {need / 1e9:.1f}GB RAM needed to cache images, '
                           f'{avail / 1e9:.1f}GB available, not caching')
            return False
        return True

    def _cache(self, kind: str, prefix: str) -> None:
        nbytes = 0
        fcn = self._cache_to_disk if kind == 'disk' else self.load_image
        with ThreadPool(_num_threads()) as pool:
            for i, x in enumerate(pool.imap(fcn, range(self.n))):
                if kind == 'disk':
                    nbytes += self.npy_files[i].stat().st_size
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    nbytes += x[0].nbytes
        LOGGER.info(f'{prefix}Cached {self.n} images ({nbytes / 1e9:.2f}GB {kind})')

    def _cache_to_disk(self, i: int) -> None:
        f = self.npy_files[i]
        if not f.exists():
            im = cv2.imread(self.im_files[i])
            if im is None:
                raise FileNotFoundError(f'Image not readable: {self.im_files[i]}')
            np.save(f, im)

    def __len__(self) -> int:
        return len(self.im_files)

    def update_image_weights(self, class_weights: np.ndarray) -> None:
        """Resample ``indices`` (with replacement, n draws) so images rich in heavily weighted classes
        come more often; train.py calls this each epoch with class_weights = model.class_weights * (1 - maps)^2 / nc.
        Needs a loader whose workers are re-created each epoch (create_dataloader does that for image_weights)."""
        cw = np.asarray(class_weights, np.float64)
        iw = labels_to_image_weights(self.labels, nc=len(cw), class_weights=cw)
        self.indices = np.array(random.choices(range(self.n), weights=iw, k=self.n))

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` as BGR uint8 with its long side resized to img_size; returns (im, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        f, fn = self.im_files[i], self.npy_files[i]
        im = np.load(fn) if fn.exists() else cv2.imread(f)
        if im is None:
            raise FileNotFoundError(f'Image not readable: {f}')
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Four images around a random centre on a 2s x 2s canvas, then random_perspective back to s x s.

        Returns (image (s, s, 3), labels (n, 5) [cls, x1, y1, x2, y2] pixels)."""
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        img4 = None
        labels4 = []
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if img4 is None:
                img4 = np.full((s * 2, s * 2, img.shape[2]), 114, dtype=np.uint8)
            if i == 0:  # top left: image's bottom-right corner at the centre
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels = self.labels[idx].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
            labels4.append(labels)
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        hyp = self.hyp
        return random_perspective(img4, labels4, degrees=hyp['degrees'], translate=hyp['translate'],
                                  scale=hyp['scale'], shear=hyp['shear'], perspective=hyp['perspective'],
                                  border=self.mosaic_border)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Any]:
        index = self.indices[index]
        hyp = self.hyp
        if self.mosaic and random.random() < hyp['mosaic']:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self.load_mosaic(random.choice(self.indices)))
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), pad)
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp['degrees'], translate=hyp['translate'],
                                                 scale=hyp['scale'], shear=hyp['shear'],
                                                 perspective=hyp['perspective'])
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=hyp['hsv_h'], sgain=hyp['hsv_s'], vgain=hyp['hsv_v'])
            if random.random() < hyp['flipud']:
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if random.random() < hyp['fliplr']:
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]
        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(np.asarray(labels, np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images; concatenate targets with column 0 set to the image's index in the batch."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes


def seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a loader worker from torch's per-worker seed (augmentations use both)."""
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def create_dataloader(path: str | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: bool | str = False, pad: float = 0.0,
                      rect: bool = False, rank: int = -1, workers: int = 8, image_weights: bool = False,
                      prefix: str = '', shuffle: bool = False, seed: int = 0,
                      nc: int | None = None) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build (loader, dataset). Val: rect=True, pad=0.5. Training: augment=True, hyp, shuffle=True.

    ``imgsz`` pixels, ``stride`` the model's max stride, ``cache`` False|'ram'|'disk', ``rank`` -1 or the
    DDP rank (adds a DistributedSampler), ``nc`` the data yaml's class count: labels with a class id >= nc
    are corrupt (pass it whenever a data yaml is known, also with single_cls; None skips that one check).
    Workers are persistent (reused over epochs, like upstream's InfiniteDataLoader) except with
    image_weights, whose per-epoch ``indices`` must reach fresh workers.
    """
    from utils.torch_utils import torch_distributed_zero_first  # torch_utils imports model code; keep it local

    if rect and shuffle:
        LOGGER.warning('WARNING ⚠️ --rect is incompatible with DataLoader shuffle, setting shuffle=False')
        shuffle = False
    with torch_distributed_zero_first(rank):  # rank 0 scans and writes the cache first
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      image_weights=image_weights, cache_images=cache, single_cls=single_cls,
                                      stride=int(stride), pad=pad, prefix=prefix, nc=nc)
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min((os.cpu_count() or 1) // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(),
                        collate_fn=LoadImagesAndLabels.collate_fn, worker_init_fn=seed_worker, generator=generator,
                        persistent_workers=nw > 0 and not image_weights)
    return loader, dataset


# ---------------------------------------------------------------- detect.py sources
def _expand_sources(path: str | Path | list) -> list[str]:
    """Files named by ``path``: files, folders (not recursive), globs, *.txt lists, or a list of those."""
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = str(p)
        if '*' in p:
            files += sorted(glob.glob(p, recursive=True))
        elif os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, '*.*')))
        elif os.path.isfile(p) and p.endswith('.txt'):
            parent = Path(p).parent
            files += [x if os.path.isabs(x) else str(parent / x)
                      for x in (s.strip() for s in Path(p).read_text().splitlines()) if x]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f'{p} does not exist')
    return files


class LoadImages:
    """Iterate images and videos: yields (path, im (3, h, w) RGB uint8 letterboxed, im0 BGR original,
    vid_cap or None, log string). Unreadable files are skipped with a warning and counted in ``skipped``."""

    def __init__(self, path: str | Path | list, img_size: int | tuple[int, int] = 640, stride: int = 32,
                 auto: bool = True, vid_stride: int = 1):
        files = _expand_sources(path)
        images = [x for x in files if x.rsplit('.', 1)[-1].lower() in IMG_FORMATS]
        videos = [x for x in files if x.rsplit('.', 1)[-1].lower() in VID_FORMATS]
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, max(int(vid_stride), 1)
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.mode = 'image'
        self.cap: cv2.VideoCapture | None = None
        self.frame, self.frames = 0, 0
        self.count = 0
        self.skipped = 0
        if self.nf == 0:
            raise FileNotFoundError(f'No images or videos found in {path}. Supported formats: '
                                    f'images {", ".join(IMG_FORMATS)}; videos {", ".join(VID_FORMATS)}')

    def __iter__(self) -> LoadImages:
        self.count = 0
        self.skipped = 0
        return self

    def _open_video(self, path: str) -> bool:
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            self.cap = None
            return False
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)
        return True

    def _skip(self, path: str, what: str) -> None:
        LOGGER.warning(f'WARNING ⚠️ skipping unreadable {what} {path}')
        self.skipped += 1
        self.count += 1

    def __next__(self) -> tuple[str, np.ndarray, np.ndarray, cv2.VideoCapture | None, str]:
        while self.count < self.nf:
            path = self.files[self.count]
            if self.video_flag[self.count]:
                self.mode = 'video'
                if self.cap is None and not self._open_video(path):
                    self._skip(path, 'video')
                    continue
                for _ in range(self.vid_stride):
                    self.cap.grab()
                ok, im0 = self.cap.retrieve()
                if not ok:  # end of this video
                    if self.frame == 0:
                        self.skipped += 1
                        LOGGER.warning(f'WARNING ⚠️ skipping unreadable video {path}')
                    self.cap.release()
                    self.cap = None
                    self.count += 1
                    continue
                self.frame += 1
                s = f'video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: '
                cap = self.cap
            else:
                self.mode = 'image'
                im0 = cv2.imread(path)
                if im0 is None:
                    self._skip(path, 'image')
                    continue
                self.count += 1
                s = f'image {self.count}/{self.nf} {path}: '
                cap = None
            im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
            im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])
            return path, im, im0, cap, s
        raise StopIteration

    def __len__(self) -> int:
        return self.nf


class LoadStreams:
    """Webcams (index like '0') or stream URLs, or a *.txt of them, each read by a background thread.

    Yields (sources, im (n, 3, h, w) RGB uint8 letterboxed, list of BGR originals, None, '').
    Raises ConnectionError when a source does not open or gives no first frame.
    """

    def __init__(self, sources: str = '0', img_size: int = 640, stride: int = 32, auto: bool = True,
                 vid_stride: int = 1):
        self.mode = 'stream'
        self.img_size, self.stride, self.vid_stride = img_size, stride, max(int(vid_stride), 1)
        src = str(sources)
        self.sources = [x.strip() for x in Path(src).read_text().split()] \
            if src.endswith('.txt') and os.path.isfile(src) else [src]
        n = len(self.sources)
        self.imgs: list[np.ndarray | None] = [None] * n
        self.fps, self.frames = [0.0] * n, [0.0] * n
        self.threads: list[Thread] = []
        self.running = True
        for i, s in enumerate(self.sources):
            cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
            if not cap.isOpened():
                raise ConnectionError(f'Failed to open stream {s}: check the camera index or URL')
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps[i] = max((fps if math.isfinite(fps) else 0) % 100, 0) or 30.0
            self.frames[i] = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or float('inf')  # inf for live streams
            ok, self.imgs[i] = cap.read()
            if not ok:
                cap.release()
                raise ConnectionError(f'Stream {s} opened but gave no frame')
            t = Thread(target=self._update, args=(i, cap, s), daemon=True)
            self.threads.append(t)
            LOGGER.info(f'{i + 1}/{n}: {s}... Success ({self.frames[i]} frames {w}x{h} at {self.fps[i]:.2f} FPS)')
            t.start()
        shapes = np.stack([letterbox(x, img_size, stride=stride, auto=auto)[0].shape for x in self.imgs])
        self.rect = np.unique(shapes, axis=0).shape[0] == 1  # same shapes: minimal padding is possible
        self.auto = auto and self.rect
        if not self.rect:
            LOGGER.warning('WARNING ⚠️ Stream shapes differ; similarly-shaped streams run faster (less padding).')
        self.count = -1

    def _update(self, i: int, cap: cv2.VideoCapture, stream: str) -> None:
        n, f = 0, self.frames[i]
        while self.running and cap.isOpened() and n < f:
            n += 1
            cap.grab()
            if n % self.vid_stride == 0:
                ok, im = cap.retrieve()
                if ok:
                    self.imgs[i] = im
                else:
                    LOGGER.warning('WARNING ⚠️ Video stream unresponsive, please check your IP camera connection.')
                    self.imgs[i] = np.zeros_like(self.imgs[i])
                    cap.open(int(stream) if stream.isnumeric() else stream)
            time.sleep(0.0)
        cap.release()

    def __iter__(self) -> LoadStreams:
        self.count = -1
        return self

    def __next__(self) -> tuple[list[str], np.ndarray, list[np.ndarray], None, str]:
        self.count += 1
        if not all(t.is_alive() for t in self.threads):
            self.close()
            raise StopIteration
        im0 = self.imgs.copy()
        im = np.stack([letterbox(x, self.img_size, stride=self.stride, auto=self.auto)[0] for x in im0])
        im = np.ascontiguousarray(im[..., ::-1].transpose((0, 3, 1, 2)))  # BHWC BGR -> BCHW RGB
        return self.sources, im, im0, None, ''

    def close(self) -> None:
        """Stop the reader threads."""
        self.running = False
        for t in self.threads:
            t.join(timeout=1)

    def __len__(self) -> int:
        return len(self.sources)
