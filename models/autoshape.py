"""The Python API of hub models: ``AutoShape`` (images in, NMS'd boxes out) and ``Detections`` (the results), with
upstream YOLOv5 v7.0's names, attributes and print/save/crop/pandas behaviour. hubconf.py wraps loaded models in it.

    results = AutoShape(model)(['a.jpg', Image.open('b.png'), cv2.imread('c.jpg')[..., ::-1]], size=640)
    results.print(); results.save(); df = results.pandas().xyxy[0]

Inputs, as upstream: file paths (str or Path), http(s) URLs, PIL images, numpy arrays in **RGB** order (HxWx3; from
OpenCV pass ``cv2.imread(f)[..., ::-1]``, upstream's documented convention), a list of those, or a BCHW float 0-1
torch tensor that goes straight to the model (its raw output is returned: no letterbox, no NMS). HxW (grey) and
HxWx4 (RGBA: alpha dropped) arrays are made RGB; anything else is refused with one line naming the input.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from contextlib import nullcontext
from copy import copy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from models.backend import ExportedModel
from utils.augmentations import letterbox
from utils.downloads import safe_download
from utils.general import (LOGGER, colorstr, count_string, increment_path, make_divisible, non_max_suppression,
                           scale_boxes, xyxy2xywh)
from utils.plots import Annotator, colors, save_one_box
from utils.torch_utils import time_sync

URL_PREFIXES = ('http://', 'https://')


class ImageInputError(ValueError):
    """An AutoShape input that is not an image it can read (one-line message naming the input)."""


# ---------------------------------------------------------------------------------------------- inputs
def _what(i: int, im: Any) -> str:
    """How an error names input ``i``: the path or URL itself, else its position and type."""
    return f"'{im}'" if isinstance(im, (str, Path)) else f'input {i} ({type(im).__name__})'


def _read_file(file: Path, label: str) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of an image file: OpenCV first (as detect.py: same pixels, EXIF orientation applied),
    PIL for what OpenCV cannot decode (e.g. GIF)."""
    if not file.exists():
        raise FileNotFoundError(f'image {label} does not exist')
    if file.is_dir():
        raise ImageInputError(f'image {label} is a folder: pass its image files (detect.py takes folders)')
    im = cv2.imread(str(file))
    if im is not None:
        return im[..., ::-1]
    try:
        with Image.open(file) as pil:
            return np.asarray(ImageOps.exif_transpose(pil).convert('RGB'))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(f'image {label} is not a readable image file ({str(e).splitlines()[0][:120]})') from None


def _read_url(url: str) -> np.ndarray:
    """Download ``url`` (utils.downloads.safe_download: one-line DownloadError when offline) into a temporary
    folder, read it, delete it."""
    name = Path(urllib.parse.urlparse(url).path).name or 'image.jpg'
    with tempfile.TemporaryDirectory(prefix='autoshape-') as tmp:
        f = safe_download(url, Path(tmp) / name)
        return _read_file(f, f"'{url}'")


def _from_array(im: np.ndarray, label: str) -> np.ndarray:
    """HxWx3 uint8 RGB from an array: HxW or HxWx1 grey, HxWx3 RGB, HxWx4 RGBA (alpha dropped), or the same
    channel-first; non-uint8 values are rounded and clipped to 0-255."""
    if im.size == 0:
        raise ImageInputError(f'{label} is empty (shape {im.shape})')
    if im.ndim == 3 and im.shape[2] not in (1, 3, 4) and im.shape[0] in (1, 3, 4):
        im = im.transpose(1, 2, 0)  # CHW -> HWC, as upstream accepts
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[..., 0]
    if not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] in (3, 4))):
        raise ImageInputError(f'{label} has shape {im.shape}: expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA); '
                              'pass several images as a list, a BCHW batch as a torch tensor')
    if im.dtype != np.uint8:
        if not (np.issubdtype(im.dtype, np.integer) or np.issubdtype(im.dtype, np.floating)):
            raise ImageInputError(f'{label} has dtype {im.dtype}: expected uint8 (or numbers 0-255)')
        im = np.clip(np.nan_to_num(im.astype(np.float32)).round(), 0, 255).astype(np.uint8)
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im[..., :3])


def load_image(im: Any, i: int = 0) -> tuple[np.ndarray, str]:
    """One AutoShape input -> (HxWx3 uint8 RGB array, file name used by save/crop: '<stem>.jpg', 'image<i>.jpg').

    Raises FileNotFoundError (missing path), utils.downloads.DownloadError (URL not fetched) or ImageInputError,
    each one line naming the input.
    """
    label, name = _what(i, im), f'image{i}'
    if isinstance(im, (str, Path)):
        s = str(im)
        if s.lower().startswith(URL_PREFIXES):
            arr, name = _read_url(s), Path(urllib.parse.urlparse(s).path).name or name
        else:
            arr, name = _read_file(Path(s), label), Path(s).name
    elif isinstance(im, Image.Image):
        try:
            arr = np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
        except (OSError, ValueError) as e:
            raise ImageInputError(f'PIL {label} cannot be read ({str(e).splitlines()[0][:120]})') from None
        name = Path(getattr(im, 'filename', '') or name).name
    elif isinstance(im, np.ndarray):
        arr = _from_array(im, f'array {label}')
    else:
        raise ImageInputError(f'{label} is not an image: pass a path, URL, PIL image, numpy array (RGB) or a '
                              'BCHW torch tensor, or a list of them')
    return arr, Path(name).with_suffix('.jpg').name


# ---------------------------------------------------------------------------------------------- the wrapper
class AutoShape(nn.Module):
    """A detector (DetectionModel, Ensemble or models.backend.ExportedModel) that takes images as they come: letterbox,
    batch, inference, NMS and boxes scaled back to each original image -> Detections.

    NMS settings are attributes (upstream's names and defaults): ``conf`` 0.25, ``iou`` 0.45, ``classes`` None (or
    a list of class indices to keep), ``agnostic`` False, ``multi_label`` False, ``max_det`` 1000; ``amp`` False
    (True: autocast on CUDA; the CPU always runs FP32).
    """

    conf = 0.25  # NMS confidence threshold
    iou = 0.45  # NMS IoU threshold
    agnostic = False  # class-agnostic NMS
    multi_label = False  # several labels per box
    classes = None  # keep only these class indices, e.g. [0, 2]
    max_det = 1000  # maximum detections per image
    amp = False  # automatic mixed precision (CUDA only)

    def __init__(self, model: nn.Module, verbose: bool = True):
        super().__init__()
        if verbose:
            LOGGER.info('Adding AutoShape... ')
        self.model = model.eval()
        self._told_fixed = False

    @property
    def stride(self) -> torch.Tensor:
        """The model's strides (pixels)."""
        return self.model.stride

    @property
    def names(self) -> dict[int, str]:
        """Class index -> name."""
        names = self.model.names
        return dict(enumerate(names)) if isinstance(names, (list, tuple)) else names

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)

    def _param(self) -> torch.Tensor:
        """A tensor with the model's device and dtype (CPU FP32 for an ONNX model, which has no parameters)."""
        return next(self.model.parameters(), torch.empty(0))

    def _batch_shape(self, shapes: list[tuple[int, int]], size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) pixels all images are letterboxed to: the largest scaled image rounded up to the stride (upstream),
        or the fixed input shape of an ONNX export."""
        fixed = self.model.fixed_imgsz() if isinstance(self.model, ExportedModel) else None
        if fixed:
            if tuple(size) != tuple(fixed) and not self._told_fixed:
                LOGGER.info(f'{self.model.file.name} has a fixed input shape: running letterboxed {fixed[0]}x'
                            f'{fixed[1]} (h x w) images, not size={size}')
                self._told_fixed = True
            return tuple(fixed)
        scaled = np.array([[x * max(size) / max(s) for x in s] for s in shapes]).max(0)
        return tuple(make_divisible(x, int(self.stride.max())) for x in scaled)

    @torch.inference_mode()
    def forward(self, ims: Any, size: int | tuple[int, int] = 640, augment: bool = False,
                profile: bool = False) -> Detections | Any:
        """Detect objects in ``ims`` (see the module docstring), letterboxed to ``size`` pixels (longest side).

        Returns Detections, with boxes in original-image pixels; a torch tensor input returns the model's raw output.
        """
        t0 = time_sync()
        size = (size, size) if isinstance(size, int) else tuple(size)
        p = self._param()
        amp = torch.autocast('cuda') if self.amp and p.device.type == 'cuda' else nullcontext()  # CPU: FP32
        if isinstance(ims, torch.Tensor):
            if ims.ndim != 4 or not ims.is_floating_point():
                raise ImageInputError(f'torch tensor input has shape {tuple(ims.shape)} and dtype {ims.dtype}: '
                                      'expected a BCHW float batch with values 0-1')
            with amp:
                return self.model(ims.to(p.device).type_as(p), augment=augment)
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise ImageInputError('no images: got an empty list')
        loaded = [load_image(im, i) for i, im in enumerate(items)]
        arrays, files = [a for a, _ in loaded], [f for _, f in loaded]
        shape0 = [a.shape[:2] for a in arrays]
        shape1 = self._batch_shape(shape0, size)
        x = np.stack([letterbox(a, shape1, auto=False)[0] for a in arrays]).transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(x)).to(p.device).type_as(p) / 255
        t1 = time_sync()
        with amp:
            y = self.model(x, augment=augment, profile=profile)
        t2 = time_sync()
        pred = non_max_suppression(y, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                   max_det=self.max_det)
        for det, s0 in zip(pred, shape0):
            scale_boxes(shape1, det[:, :4], s0)
        t3 = time_sync()
        return Detections(arrays, pred, files, (t1 - t0, t2 - t1, t3 - t2), self.names, tuple(x.shape))


# ---------------------------------------------------------------------------------------------- the results
def _in_notebook() -> bool:
    """True inside an IPython/Jupyter session (IPython already imported and running)."""
    ipython = sys.modules.get('IPython')
    return ipython is not None and getattr(ipython, 'get_ipython', lambda: None)() is not None


def _has_display() -> bool:
    """False on a Linux session without DISPLAY/WAYLAND_DISPLAY (where no viewer window can open)."""
    return platform.system() != 'Linux' or bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


class Detections:
    """Detections of a batch of images (upstream v7.0's class and attributes).

    ims: the images, HxWx3 uint8 RGB (render() replaces them by the drawn ones, as upstream); pred / xyxy: per image
    (n, 6) tensors x1, y1, x2, y2 (original-image pixels), confidence, class; xywh: centre x, centre y, width,
    height (pixels); xyxyn / xywhn: the same divided by the image width and height (0-1); names: class index ->
    name; files: '<stem>.jpg' per image; times: seconds for the batch (pre-process, inference, NMS); t: the same
    in ms per image; n: number of images; s: the batch shape (b, 3, h, w) the model saw.
    """

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str],
                 times: Sequence[float] = (0.0, 0.0, 0.0), names: dict[int, str] | None = None,
                 shape: Sequence[int] | None = None):
        self.ims, self.pred, self.files = ims, pred, files
        self.names = names if names is not None else {}
        self.times = tuple(times)
        self.n = len(pred)
        self.t = tuple(x / max(self.n, 1) * 1e3 for x in self.times)  # ms per image
        self.s = tuple(shape) if shape is not None else ()
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0], device=p.device)
              for im, p in zip(ims, pred)]
        self.xyxy = pred
        self.xywh = [xyxy2xywh(x) for x in pred]
        self.xyxyn = [x / g for x, g in zip(self.xyxy, gn)]
        self.xywhn = [x / g for x, g in zip(self.xywh, gn)]

    def _draw(self, i: int, labels: bool) -> np.ndarray:
        """A copy of image i with its boxes and labels drawn like detect.py (utils.plots.Annotator, RGB colours)."""
        annotator = Annotator(self.ims[i].copy(), example=str(self.names))
        for *box, conf, cls in reversed(self.pred[i].tolist()):
            name = self.names.get(int(cls), str(int(cls)))
            annotator.box_label(box, f'{name} {conf:.2f}' if labels else '', color=colors(int(cls)))
        return annotator.result()

    def _line(self, i: int) -> str:
        im, det = self.ims[i], self.pred[i]
        s = f'image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} '
        return s + (count_string(det[:, 5], self.names).rstrip(', ') if len(det) else '(no detections)')

    def __str__(self) -> str:
        lines = [self._line(i) for i in range(self.n)]
        pre, inference, nms = self.t
        speed = (f'Speed: {pre:.1f}ms pre-process, {inference:.1f}ms inference, {nms:.1f}ms NMS per image at shape '
                 f'{self.s}')
        return '\n'.join(lines + [speed])

    def __repr__(self) -> str:
        return f'YOLOv5 {self.__class__} instance\n{self}'

    def __len__(self) -> int:
        return self.n

    def print(self) -> None:
        """Log one line per image ('image 1/2: 256x256 2 circles, 1 rectangle') and the speed line."""
        LOGGER.info(str(self))

    def show(self, labels: bool = True) -> None:
        """Show the drawn images (Jupyter: inline; else the system image viewer); only a log line without a display."""
        notebook = _in_notebook()
        if not notebook and not _has_display():
            LOGGER.info('Detections.show(): no display here (no DISPLAY); use save() or render() instead')
            return
        for i in range(self.n):
            im = Image.fromarray(self._draw(i, labels))
            if notebook:
                from IPython.display import display
                display(im)
            else:
                im.show(title=self.files[i])

    def save(self, labels: bool = True, save_dir: str | Path = 'runs/detect/exp', exist_ok: bool = False) -> Path:
        """Write the drawn images as <save_dir>/<file> (save_dir incremented: exp, exp2, ... unless exist_ok);
        returns the folder."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True)
        for i in range(self.n):
            cv2.imwrite(str(save_dir / self.files[i]), self._draw(i, labels)[..., ::-1])
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n > 1)} to {colorstr('bold', save_dir)}")
        return save_dir

    def crop(self, save: bool = True, save_dir: str | Path = 'runs/detect/exp', exist_ok: bool = False) -> list[dict]:
        """Crop every box (utils.plots.save_one_box, like detect.py --save-crop): with ``save`` into
        <save_dir>/crops/<class name>/<file> (save_dir incremented). Returns one dict per box: 'box' (xyxy pixels),
        'conf', 'cls', 'label' ('<name> <conf>') and 'im' (the crop, BGR as upstream)."""
        save_dir = increment_path(save_dir, exist_ok, mkdir=True) if save else None
        crops = []
        for i in range(self.n):
            bgr = np.ascontiguousarray(self.ims[i][..., ::-1])
            for *box, conf, cls in reversed(self.pred[i].tolist()):
                name = self.names.get(int(cls), str(int(cls)))
                file = save_dir / 'crops' / name / self.files[i] if save else Path(self.files[i])
                crops.append({'box': box, 'conf': conf, 'cls': cls, 'label': f'{name} {conf:.2f}',
                              'im': save_one_box(box, bgr, file=file, BGR=True, save=save)})
        if save:
            LOGGER.info(f'Saved results to {save_dir}')
        return crops

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Draw the boxes into ``ims`` (RGB) and return them."""
        self.ims = [self._draw(i, labels) for i in range(self.n)]
        return self.ims

    def pandas(self) -> Detections:
        """A copy whose xyxy, xyxyn, xywh, xywhn are lists of pandas DataFrames (one per image) with upstream's
        columns: xmin ymin xmax ymax (or xcenter ycenter width height) confidence class name."""
        import pandas as pd

        new = copy(self)
        xyxy = 'xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name'
        xywh = 'xcenter', 'ycenter', 'width', 'height', 'confidence', 'class', 'name'
        for k, columns in (('xyxy', xyxy), ('xyxyn', xyxy), ('xywh', xywh), ('xywhn', xywh)):
            frames = []
            for t in getattr(self, k):
                rows = [[*r[:5], int(r[5]), self.names.get(int(r[5]), str(int(r[5])))] for r in t.tolist()]
                frames.append(pd.DataFrame(rows, columns=list(columns)))
            setattr(new, k, frames)
        return new

    def tolist(self) -> list[Detections]:
        """One Detections per image (``for r in results.tolist():``)."""
        return [Detections([self.ims[i]], [self.pred[i]], [self.files[i]], tuple(x / self.n for x in self.times),
                           self.names, self.s) for i in range(self.n)]
