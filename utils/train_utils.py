"""Training-loop helpers for train.py: LR schedule and warmup, layer freezing, resume, checkpoints, results.csv,
stop signals and distributed bookkeeping.

Each helper is small and does one thing, so that train.py's loop reads top to bottom on one screen.
Units: ``ni`` counts training iterations (batches) since the start of training, ``nw`` the warmup iterations,
``nbs`` the nominal batch size (images per optimizer step, 64 as upstream).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.checkpoint import make_checkpoint, save
from utils.general import LOGGER

# results.csv columns after 'epoch', exactly upstream v7.0's (loggers/__init__.py keys)
RESULTS_COLUMNS = ('train/box_loss', 'train/obj_loss', 'train/cls_loss',
                   'metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
                   'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'x/lr0', 'x/lr1', 'x/lr2')
SPARSITY_COLUMNS = ('sparsity',)  # trailing column when a pruned model is trained
DNS_COLUMNS = ('sparsity', 'dns/pruned', 'dns/spliced')  # trailing columns with --dns


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, unusable data or weights); main() prints it as one 'ERROR:' line."""


class Interrupted(Exception):
    """Raised by train() after SIGINT/SIGTERM once last.pt is saved; ``signum`` is the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


# ---------------------------------------------------------------------------------------------- distributed
def ddp_env() -> tuple[int, int, int]:
    """(LOCAL_RANK, RANK, WORLD_SIZE) set by torch.distributed.run; (-1, -1, 1) for a single process."""
    return int(os.getenv('LOCAL_RANK', -1)), int(os.getenv('RANK', -1)), int(os.getenv('WORLD_SIZE', 1))


def any_rank(flags: Sequence[bool], device: torch.device, world_size: int) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one tiny all_reduce; a plain copy without DDP).

    Used once per iteration so that every rank stops at the same iteration (a rank that stopped alone
    would leave the others waiting in DDP's gradient all-reduce forever).
    """
    if world_size <= 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


# ---------------------------------------------------------------------------------------------- LR schedule
def one_cycle(y1: float = 0.0, y2: float = 1.0, steps: int = 100) -> Callable[[float], float]:
    """Half-cosine ramp from y1 (x=0) to y2 (x=steps) (Smith's 1cycle, https://arxiv.org/abs/1803.09820)."""
    return lambda x: ((1 - math.cos(x * math.pi / steps)) / 2) * (y2 - y1) + y1


def lr_lambda(epochs: int, lrf: float, cos: bool = False) -> Callable[[float], float]:
    """LR factor per epoch for LambdaLR: linear 1 -> lrf over ``epochs`` (upstream default) or cosine with cos=True."""
    if cos:
        return one_cycle(1, lrf, epochs)
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup_accumulate(ni: int, nw: int, nbs: int, batch_size: int) -> int:
    """Batches per optimizer step at iteration ``ni``: ramps from 1 to nbs/batch_size over the warmup.

    After warmup (ni > nw) it is the final value, max(round(nbs / batch_size), 1).
    """
    if ni > nw:
        return max(round(nbs / batch_size), 1)
    return max(1, int(np.interp(ni, [0, nw], [1, nbs / batch_size]).round()))


def warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, lr_factor: float, hyp: dict) -> None:
    """Warmup LR and momentum at iteration ``ni`` of ``nw`` (call only while ni <= nw).

    Group 0 (biases, see smart_optimizer) falls from hyp['warmup_bias_lr'], the others rise from 0, all towards
    initial_lr * lr_factor (the epoch's scheduled factor); momentum (or Adam beta1) rises from
    hyp['warmup_momentum'] to hyp['momentum']. Large early bias steps move the output priors quickly
    while the weights, still random, take small ones.
    """
    xi = [0, nw]
    for j, group in enumerate(optimizer.param_groups):
        start = hyp['warmup_bias_lr'] if j == 0 else 0.0
        group['lr'] = float(np.interp(ni, xi, [start, group['initial_lr'] * lr_factor]))
        momentum = float(np.interp(ni, xi, [hyp['warmup_momentum'], hyp['momentum']]))
        if 'momentum' in group:
            group['momentum'] = momentum
        elif 'betas' in group:
            group['betas'] = (momentum, group['betas'][1])


def optimizer_steps(iterations: int, nw: int, nbs: int, batch_size: int) -> int:
    """Number of optimizer steps the loop takes in its first ``iterations`` batches (gradient accumulation rule)."""
    steps, last = 0, -1
    for ni in range(iterations):
        if ni - last >= warmup_accumulate(ni, nw, nbs, batch_size):
            steps, last = steps + 1, ni
    return steps


def multi_scale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    """Resize a float batch to a random size in [0.5, 1.5] * imgsz pixels, a multiple of stride ``gs``."""
    import random

    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]  # stretched to multiples of gs
    return nn.functional.interpolate(imgs, size=ns, mode='bilinear', align_corners=False)


# ---------------------------------------------------------------------------------------------- model setup
def freeze_layers(model: nn.Module, freeze: Sequence[int]) -> list[str]:
    """Freeze parameters of the first ``freeze[0]`` layers ([10] = backbone) or of the listed layer indices.

    ``[0]`` freezes nothing. Returns the names of the frozen parameters.
    """
    indices = list(freeze) if len(freeze) > 1 else list(range(freeze[0] if freeze else 0))
    prefixes = tuple(f'model.{x}.' for x in indices)
    frozen = []
    for name, p in model.named_parameters():
        p.requires_grad = not (prefixes and name.startswith(prefixes))
        if not p.requires_grad:
            frozen.append(name)
    return frozen


def latest_run(search_dir: str | Path) -> Path | None:
    """The most recently written last*.pt under ``search_dir`` (for --resume without a path), else None."""
    files = list(Path(search_dir).rglob('last*.pt'))
    return max(files, key=os.path.getmtime) if files else None


def resume_opt(ckpt: dict, last: Path, defaults: argparse.Namespace) -> argparse.Namespace:
    """The options of the run that wrote ``last``: flags it did not know keep their ``defaults``."""
    saved = ckpt.get('opt')
    if not isinstance(saved, dict):
        raise TrainingError(f"{last} holds no training options ('opt'); it cannot be resumed, "
                            f'start a new run with --weights {last}')
    if ckpt.get('optimizer') is None:
        raise TrainingError(f'{last} is a finished (stripped) checkpoint, nothing to resume; '
                            f'start a new run with --weights {last}')
    opt = argparse.Namespace(**{**vars(defaults), **saved})
    opt.cfg, opt.weights, opt.resume = '', str(last), True
    opt.save_dir = str(Path(last).parent.parent)  # the run folder it is in now (it may have been moved)
    return opt


def restore_training_state(ckpt: dict, optimizer: torch.optim.Optimizer, ema: Any, weights: str | Path,
                           epochs: int, resume: bool) -> tuple[float, int, int]:
    """Load optimizer and EMA state from a training checkpoint; returns (best_fitness, start_epoch, epochs).

    Like upstream's smart_resume. Fine-tuning a checkpoint (no --resume) for fewer epochs than it was trained
    adds ``epochs`` to its count.
    """
    best_fitness, start_epoch = 0.0, ckpt.get('epoch', -1) + 1
    if ckpt.get('optimizer') is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        best_fitness = float(ckpt.get('best_fitness') or 0.0)
    if ema is not None and ckpt.get('ema') is not None:
        ema.ema.load_state_dict(ckpt['ema'].float().state_dict())
        ema.updates = int(ckpt.get('updates') or 0)
    if resume:
        LOGGER.info(f'Resuming training from {weights} from epoch {start_epoch} to {epochs} total epochs')
    if epochs < start_epoch:
        LOGGER.info(f"{weights} has been trained for {ckpt['epoch']} epochs. Fine-tuning for {epochs} more epochs.")
        epochs += ckpt['epoch']
    return best_fitness, start_epoch, epochs


# ---------------------------------------------------------------------------------------------- outputs
def opt_dict(opt: argparse.Namespace) -> dict[str, Any]:
    """vars(opt) with Path values as strings (for opt.yaml and checkpoints, which must load without pathlib)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(opt).items()}


def save_training_checkpoint(files: Sequence[Path], model: nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
                             epoch: int, best_fitness: float, opt: argparse.Namespace, **extra: Any) -> None:
    """Write one checkpoint (upstream layout, FP16, optimizer state for --resume) atomically to each of ``files``.

    ``extra`` keys (e.g. ``dns``) are stored next to upstream's and ignored by upstream's loader.
    """
    ckpt = make_checkpoint(model, ema.ema if ema else None, epoch=epoch, best_fitness=float(best_fitness),
                           updates=ema.updates if ema else None, optimizer=optimizer.state_dict(),
                           opt=opt_dict(opt), **extra)
    for f in files:
        save(ckpt, f)


def append_results(file: str | Path, epoch: int, values: Sequence[float], extra: dict[str, float] | None = None):
    """Append one row to results.csv in upstream's format ('%20s' header, '%20.5g' values, comma-separated).

    ``values`` are the 13 RESULTS_COLUMNS; ``extra`` adds trailing columns (e.g. sparsity), written as
    integers when they are ints. The header is written with the first row.
    """
    file = Path(file)
    keys = ['epoch', *RESULTS_COLUMNS, *(extra or {})]
    vals = [epoch, *(float(v) for v in values), *(extra or {}).values()]
    if len(vals) != len(keys):
        raise ValueError(f'results.csv row has {len(vals)} values for {len(keys)} columns')
    header = '' if file.exists() else ','.join('%20s' % k for k in keys) + '\n'
    row = ','.join('%20d' % v if isinstance(v, (int, np.integer)) and k != 'epoch' else '%20.5g' % v
                   for k, v in zip(keys, vals))
    with open(file, 'a') as f:
        f.write(header + row + '\n')


# ---------------------------------------------------------------------------------------------- signals
class StopSignal:
    """Context manager turning SIGINT/SIGTERM into a flag that the training loop checks between iterations.

    The first signal only records its number in ``received`` and restores the previous handlers, so the
    loop can finish the iteration, save last.pt and exit, while a second Ctrl-C interrupts at once.
    Handlers are installed only when entered from the main thread, and always restored on exit.
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore()
        LOGGER.warning(f'\n{signal.Signals(signum).name} received: stopping after this iteration and saving '
                       f'last.pt (send it again to stop at once)')

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler not set from Python
        self._previous = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()
