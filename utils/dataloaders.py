"""Data sets and loaders: the training/val data set with augmentation, the loaders, and the image/video/stream
sources used by detect.py. Data yaml checks: utils/data_yaml.py; label verification and cache: utils/labels.py.

YOLO format: every image ``.../images/<split>/name.jpg`` has a label file ``.../labels/<split>/name.txt``
with one object per line, ``cls xc yc w h``, coordinates normalized to 0-1 by the image width/height.
A missing or empty label file means a background image.
"""
from __future__ import annotations

import glob
import math
import os
import random
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path
from threading import Thread
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed

from utils.augmentations import augment_hsv, letterbox, mixup, random_perspective
from utils.general import LOGGER, xywhn2xyxy, xyxy2xywhn
from utils.labels import (CORRUPT, EMPTY, IMG_FORMATS, MISSING, OK, img2label_paths, labels_to_image_weights,
                          num_threads, scan_labels)
from utils.torch_utils import torch_distributed_zero_first

VID_FORMATS = 'asf', 'avi', 'gif', 'm4v', 'mkv', 'mov', 'mp4', 'mpeg', 'mpg', 'ts', 'wmv'


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

        self.im_files = self.list_images(path, prefix)
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
    def list_images(path: str | Path | list, prefix: str) -> list[str]:
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
        with ThreadPool(num_threads()) as pool:
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
