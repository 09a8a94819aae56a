"""Small shared helpers: logging, paths, YAML, box conversions and NMS.

Boxes: ``xyxy`` = corners (x1, y1, x2, y2), ``xywh`` = centre + size, both in pixels unless the name
ends in ``n`` (normalized to 0-1 by image width/height).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import yaml

ROOT = Path(__file__).resolve().parents[1]  # repository root
LOGGER = logging.getLogger('yolov5')


def set_logging(verbose: bool = True, rank: int = -1) -> None:
    """Configure the 'yolov5' logger for CLI use (INFO on rank 0/-1, WARNING elsewhere)."""
    level = logging.INFO if verbose and rank in {-1, 0} else logging.WARNING
    LOGGER.setLevel(level)
    if not LOGGER.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter('%(message)s'))
        LOGGER.addHandler(handler)
    LOGGER.propagate = False


def colorstr(*args: str) -> str:
    """Wrap the last argument in ANSI colour codes, e.g. colorstr('blue', 'bold', 'text')."""
    *styles, text = args if len(args) > 1 else ('blue', 'bold', args[0])
    codes = {'black': '\033[30m', 'red': '\033[31m', 'green': '\033[32m', 'yellow': '\033[33m',
             'blue': '\033[34m', 'magenta': '\033[35m', 'cyan': '\033[36m', 'white': '\033[37m',
             'bold': '\033[1m', 'underline': '\033[4m', 'end': '\033[0m'}
    return ''.join(codes[s] for s in styles) + f'{text}' + codes['end']


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = '', mkdir: bool = False) -> Path:
    """runs/exp -> runs/exp2, runs/exp3, ... (first free number); ``exist_ok`` reuses ``path`` as is."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(''), path.suffix) if path.is_file() else (path, '')
        pattern = re.compile(rf'^{re.escape(stem.name)}{re.escape(sep)}(\d+)$')
        used = [int(m.group(1)) for p in stem.parent.glob(f'{stem.name}{sep}*')
                if (m := pattern.match(p.with_suffix('').name if suffix else p.name))]
        n = max([1] + used) + 1
        path = Path(f'{stem}{sep}{n}{suffix}')
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def make_divisible(x: float, divisor: int | torch.Tensor) -> int:
    """Smallest multiple of ``divisor`` that is >= x."""
    if isinstance(divisor, torch.Tensor):
        divisor = int(divisor.max())
    return math.ceil(x / divisor) * divisor


def check_img_size(imgsz: int | list[int], s: int = 32, floor: int = 0) -> int | list[int]:
    """Round image size(s) (pixels) up to a multiple of stride ``s``, warning when changed."""
    if isinstance(imgsz, int):
        new = max(make_divisible(imgsz, int(s)), floor)
    else:
        new = [max(make_divisible(x, int(s)), floor) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f'WARNING ⚠️ --img-size {imgsz} must be multiple of max stride {s}, updating to {new}')
    return new


def yaml_load(file: str | Path) -> dict:
    """Read a YAML file safely (no code execution)."""
    with open(file, errors='ignore') as f:
        return yaml.safe_load(f) or {}


def yaml_save(file: str | Path, data: dict) -> None:
    """Write ``data`` as YAML; Path values become strings."""
    with open(file, 'w') as f:
        yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in data.items()}, f, sort_keys=False)


# ---------------------------------------------------------------- boxes
def _clone(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(n,4) corners -> centre x, centre y, width, height (same units)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(n,4) centre + size -> corners (same units)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: torch.Tensor | np.ndarray, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0):
    """Normalized centre + size -> pixel corners in a (w, h) image shifted by padding (pixels)."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: torch.Tensor | np.ndarray, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0):
    """Pixel corners -> normalized centre + size for a (w, h) image; ``clip`` first clips to the image."""
    if clip:
        x = _clone(x)
        clip_boxes(x, (h - eps, w - eps))
    y = _clone(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def segments2boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons (each (k,2) xy) -> (n,4) xywh boxes."""
    boxes = [[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()] for s in segments]
    return xyxy2xywh(np.array(boxes, dtype=np.float32).reshape(-1, 4))


def clip_boxes(boxes: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> None:
    """Clip xyxy boxes in place to an image of ``shape`` = (height, width) pixels."""
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, shape[1])
        boxes[..., 1].clamp_(0, shape[0])
        boxes[..., 2].clamp_(0, shape[1])
        boxes[..., 3].clamp_(0, shape[0])
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, shape[1])
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, shape[0])


def scale_boxes(img1_shape: tuple[int, int], boxes, img0_shape: tuple[int, ...], ratio_pad=None):
    """Map xyxy boxes from a letterboxed image of ``img1_shape`` (h, w) back to the original ``img0_shape``.

    ``ratio_pad`` = ((gain_h, gain_w), (pad_w, pad_h)) as stored by the data loader; computed when None.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    clip_boxes(boxes, img0_shape)
    return boxes


# ---------------------------------------------------------------- NMS
def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        labels: tuple = (), max_det: int = 300, max_nms: int = 30000,
                        max_wh: int = 7680) -> list[torch.Tensor]:
    """Per-image NMS on decoded predictions (bs, N, 5+nc) = xywh pixels, objectness, class scores.

    Scores are objectness * class probability. Returns one (n, 6) tensor per image:
    x1, y1, x2, y2 (pixels), confidence, class. Uses ``torchvision.ops.batched_nms``
    (classes kept apart unless ``agnostic``). ``labels`` (a-priori boxes per image, (m, 5) cls xywh)
    are appended before NMS (used for --save-hybrid).
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f'Invalid confidence threshold {conf_thres}, valid values are between 0.0 and 1.0')
    if not 0 <= iou_thres <= 1:
        raise ValueError(f'Invalid IoU {iou_thres}, valid values are between 0.0 and 1.0')
    if isinstance(prediction, (list, tuple)):  # model output in eval mode is (pred, raw maps)
        prediction = prediction[0]
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    output = [torch.zeros((0, 6), device=prediction.device)] * bs
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if labels and len(labels[xi]):
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + 5), device=x.device)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[range(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            continue
        x = x.float()
        x[:, 5:] *= x[:, 4:5]  # conf = obj * cls
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
        else:
            conf, j = x[:, 5:].max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        idxs = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
        keep = torchvision.ops.batched_nms(x[:, :4], x[:, 4], idxs, iou_thres)[:max_det]
        output[xi] = x[keep]
    return output


def count_string(cls: torch.Tensor, names: dict[int, str]) -> str:
    """'2 circles, 1 rectangle, ' for a tensor of class indices (upstream's plural 's'); detect.py's log lines and
    models.autoshape.Detections use it."""
    s = ''
    for c in cls.unique():
        n = int((cls == c).sum())
        s += f"{n} {names[int(c)]}{'s' * (n > 1)}, "
    return s


def intersect_dicts(da: dict, db: dict, exclude: tuple = ()) -> dict[str, Any]:
    """Entries of ``da`` whose key is in ``db`` with the same shape and no ``exclude`` substring."""
    return {k: v for k, v in da.items()
            if k in db and all(x not in k for x in exclude) and v.shape == db[k].shape}
