"""Comparing detect.py label files of two exports of one model (FP32 vs INT8) in tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.metrics import box_iou


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    """{image stem: (n, 6) cls xc yc w h conf} from detect.py --save-txt --save-conf label files."""
    return {t.stem: np.loadtxt(t, ndmin=2) for t in folder.glob('*.txt')}


def assert_boxes_match(ref: dict[str, np.ndarray], other: dict[str, np.ndarray], conf: float = 0.5,
                       iou: float = 0.8) -> None:
    """Every ``ref`` box above ``conf`` has a box of the same class in ``other`` at IoU >= ``iou``."""
    assert ref and ref.keys() == other.keys()

    def xyxy(t: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.c_[t[:, 1:3] - t[:, 3:5] / 2, t[:, 1:3] + t[:, 3:5] / 2])

    for k, a in ref.items():
        b = other[k]
        a = a[a[:, 5] > conf]
        overlap = box_iou(xyxy(a), xyxy(b)) * torch.tensor(a[:, :1] == b[:, 0][None])
        assert len(a) and (overlap.max(1).values >= iou).all(), k
