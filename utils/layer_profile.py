"""Per-layer time and FLOPs of a YOLOv5 forward pass (``model(x, profile=True)``, ``models/yolo.py --line-profile``).

Where the time of a (pruned) model goes: every layer of the layer list is run ``runs`` times on the input it gets in
a real forward, and its fastest run is kept; its FLOPs are counted by torch's own flop counter on that input.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from utils.torch_utils import time_sync


@dataclass
class LayerTime:
    """One layer's cost on its real input: fastest run (ms), GFLOPs of one call, parameter count."""

    index: int
    module: str  # e.g. 'models.common.C3'
    ms: float
    gflops: float
    params: int


def time_layer(m: nn.Module, x: torch.Tensor | list[torch.Tensor], runs: int = 10) -> LayerTime:
    """Fastest of ``runs`` calls of layer ``m`` on ``x`` (after one untimed call) and the GFLOPs of one call.

    A list input (Concat, Detect) is passed as a fresh copy each call, because Detect writes its outputs into it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def call() -> None:
        m(list(x) if isinstance(x, list) else x)

    with FlopCounterMode(display=False) as counter:
        call()
    best = float('inf')
    for _ in range(max(runs, 1)):
        t = time_sync()
        call()
        best = min(best, time_sync() - t)
    return LayerTime(int(getattr(m, 'i', -1)), str(getattr(m, 'type', type(m).__name__)), best * 1e3,
                     counter.get_total_flops() / 1e9, sum(p.numel() for p in m.parameters()))


def layer_table(rows: Sequence[LayerTime]) -> str:
    """The per-layer rows and their total as a text table (ms, GFLOPs, params, module)."""
    lines = [f"{'layer':>5}{'time (ms)':>11}{'GFLOPs':>10}{'params':>11}  module"]
    lines += [f'{r.index:>5}{r.ms:>11.2f}{r.gflops:>10.3f}{r.params:>11,}  {r.module}' for r in rows]
    lines.append(f"{'':>5}{sum(r.ms for r in rows):>11.2f}{sum(r.gflops for r in rows):>10.3f}"
                 f"{sum(r.params for r in rows):>11,}  total")
    return '\n'.join(lines)
