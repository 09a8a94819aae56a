"""Structured (channel) pruning: rank channel groups, pick channels to remove, physically shrink the model.

Three replaceable parts, as in utils/compression/weight/magnitude.py for weights:
- importance: `channel_importance(group, kind)` scores every channel of a group (float32, higher = keep):
  'l1' is the mean |w| of the group's filters (the L1 filter norm per weight, comparable across layers of
  different fan-in), 'bn' the mean |gamma| of its BatchNorm scales (network slimming, Liu et al. 2017);
- selection: `select_channels(groups, scores, amount, scope)` keeps the highest-scoring channels so that
  the fraction ``amount`` of the prunable channels goes (per group for scope 'layer', over all groups for
  'global'), never emptying a group and optionally rounding kept counts up to a multiple of ``round_to``;
- editing: `shrink(groups, keep)` slices every producer (conv out-channels, its BN) and every reader (conv
  in-channels at the right offsets of a Concat, BN features) of each group in place. The model stays an ordinary
  model of the same classes with smaller tensors, so it pickles, fuses, trains, exports and loads in upstream
  YOLOv5 like any other.

`prune_channels(model, amount)` runs the three; `channel_masks_to_zero` zeroes channels in place without
shrinking (what channel-level DNS trains with: BN scale and shift of a masked channel are 0, so its output is
exactly 0 and removing it later changes no output).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.yolo import Detect
from utils.checkpoint import load, save
from utils.compression.channel.groups import ChannelGroup, ChannelPruningError, Producer, channel_groups
from utils.compression.layers import SCOPES, de_parallel
from utils.torch_utils import model_flops

LOGGER = logging.getLogger('yolov5')

IMPORTANCES = ('l1', 'bn', 'group')
DEFAULT_IMPORTANCE = 'group'  # what val.py, detect.py and train.py rank by unless told: best after fine-tuning


# ------------------------------------------------------------------------------------------------ importance
def _filter_l1(p: Producer) -> Tensor:
    w = p.conv.weight.detach().float()
    return w.abs().flatten(1).mean(1)


def _reader_l1(group: ChannelGroup) -> list[Tensor]:
    """Per reader conv: sum of |w| over the input slices (all offsets) that read this group's channels."""
    members = set(group.producers)
    out = []
    for c in group.consumers:
        if not isinstance(c.module, nn.Conv2d):
            continue
        w = c.module.weight.detach().float().abs().sum((0, 2, 3))  # (in_channels,)
        total, offset = torch.zeros(group.channels, device=w.device), 0
        for p in c.inputs:
            if p in members:
                total += w[offset:offset + p.channels]
            offset += p.channels
        out.append(total.cpu())
    return out


def channel_importance(group: ChannelGroup, kind: str = 'l1') -> Tensor:
    """Scores (group.channels,) float32 on CPU: mean |w| per filter ('l1') or |BN gamma| ('bn'), averaged over members;
    'group' (Torch-Pruning's group L1): every member's filter |w| sum, BN |gamma| and every reader's input-slice |w|
    sum, each divided by its mean, averaged.

    'bn' falls back to 'l1' for members without a BatchNorm (e.g. a fused model).
    """
    if kind not in IMPORTANCES:
        raise ValueError(f"channel importance must be one of {', '.join(IMPORTANCES)}, got {kind!r}")
    if kind == 'group':
        terms = [p.conv.weight.detach().float().abs().flatten(1).sum(1).cpu()
                 for p in group.producers if p.conv is not None]
        terms += [p.bn.weight.detach().float().abs().cpu() for p in group.producers if p.bn is not None]
        terms += _reader_l1(group)
        if not terms:
            return torch.zeros(group.channels)
        return torch.stack([t / t.mean().clamp_min(1e-12) for t in terms]).mean(0)
    scores = []
    for p in group.producers:
        if p.conv is None:
            continue
        if kind == 'bn' and p.bn is not None:
            scores.append(p.bn.weight.detach().float().abs())
        else:
            scores.append(_filter_l1(p))
    if not scores:
        return torch.zeros(group.channels)
    return torch.stack([s.cpu() for s in scores]).mean(0)


# ------------------------------------------------------------------------------------------- kernel widths
def channel_multiple(device: torch.device | str = 'cpu') -> int:
    """Channel count that kernels on ``device`` process in one block; kept counts rounded to it run fastest.

    CUDA: 8 (FP16 tensor-core tiles). CPU: 16 with AVX-512 (16 FP32 lanes; oneDNN's blocked layout pads channels
    to 16, so a layer of 24 channels costs as much as one of 32 or more: benchmarks/width_bench.py, a 3x3 conv at
    80x80 px takes 0.70 ms at 24 channels and 0.62 ms at 32), else 8 (AVX2: 8 lanes). ``device``: a torch.device
    or a --device string ('' = CUDA when available).
    """
    if isinstance(device, str):
        d = device.strip().lower().replace('cuda:', '')
        cuda = torch.cuda.is_available() if d == '' else d != 'cpu'
    else:
        cuda = device.type == 'cuda'
    if cuda:
        return 8
    return 16 if torch.backends.cpu.get_cpu_capability().startswith('AVX512') else 8


def resolve_round(round_to: int | str, device: torch.device | str = 'cpu') -> int:
    """``round_to`` as an integer: 'auto' becomes `channel_multiple(device)`."""
    return channel_multiple(device) if round_to == 'auto' else int(round_to)


# ------------------------------------------------------------------------------------------------- selection
def _check(amount: float, scope: str, round_to: int) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f'channel pruning amount must be in [0, 1), got {amount}')
    if scope not in SCOPES:
        raise ValueError(f"channel pruning scope must be 'layer' or 'global', got {scope!r}")
    if not (isinstance(round_to, int) and round_to >= 1):
        raise ValueError(f'round_to must be an integer >= 1, got {round_to!r}')


def _round_keep(n_keep: int, channels: int, round_to: int) -> int:
    """Kept count rounded up to a multiple of round_to, at least 1 (and at most all channels)."""
    n_keep = max(n_keep, 1)
    return min(channels, math.ceil(n_keep / round_to) * round_to)


def _top(scores: Tensor, n_keep: int) -> Tensor:
    """Bool keep-mask of the n_keep highest scores; ties keep the lower channel index (deterministic)."""
    order = torch.sort(-scores, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep


def select_channels(groups: Sequence[ChannelGroup], scores: Sequence[Tensor], amount: float, scope: str = 'layer',
                    round_to: int = 1) -> list[Tensor]:
    """Bool keep-masks (True = keep), one per group; frozen groups keep everything.

    'layer': each prunable group drops round(amount * channels) channels. 'global': the round(amount * N) lowest
    scores among all N prunable channels go, except that every group keeps its best channel. Then kept counts are
    rounded up to a multiple of ``round_to`` (restoring the best-scored dropped channels), so the pruned fraction
    can end slightly below ``amount``.
    """
    _check(amount, scope, round_to)
    prunable = [i for i, g in enumerate(groups) if not g.frozen]
    keep = [torch.ones(g.channels, dtype=torch.bool) for g in groups]
    if scope == 'layer':
        counts = {i: groups[i].channels - round(amount * groups[i].channels) for i in prunable}
    else:
        flat = []
        for i in prunable:
            s = scores[i].clone().float()
            s[torch.argmax(s)] = math.inf  # every group keeps its best channel
            flat.append(s)
        counts = {}
        if flat:
            all_scores = torch.cat(flat)
            drop = _top(-all_scores, round(amount * all_scores.numel()))  # lowest scores, lower index first on ties
            for i, part in zip(prunable, drop.split([groups[i].channels for i in prunable])):
                counts[i] = groups[i].channels - int(part.sum())
    for i in prunable:
        keep[i] = _top(scores[i].float(), _round_keep(counts[i], groups[i].channels, round_to))
    return keep


# --------------------------------------------------------------------------------------------------- editing
def _slice_param(module: nn.Module, name: str, index: Tensor, dim: int) -> None:
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(module, name, new)  # buffers (running stats) stay registered buffers


def _slice_bn(bn: nn.BatchNorm2d, index: Tensor) -> None:
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        _slice_param(bn, name, index, 0)
    bn.num_features = int(index.numel())


@torch.no_grad()
def shrink(groups: Sequence[ChannelGroup], keep: Sequence[Tensor]) -> None:
    """Remove, in place, the channels not kept (bool masks from `select_channels`) from producers and readers.

    The groups must come from `channel_groups` on the model as it is now (they describe current shapes).
    """
    kept: dict[Producer, Tensor] = {}
    for g, k in zip(groups, keep):
        if k.numel() != g.channels:
            raise ValueError(f'keep-mask of {g.name} has {k.numel()} entries, the group has {g.channels} channels')
        if bool(k.all()):
            continue
        if g.frozen:
            raise ChannelPruningError(f'channel pruning: {g.name} may not be pruned ({g.frozen})')
        if not bool(k.any()):
            raise ChannelPruningError(f'channel pruning would empty {g.name}; keep at least one channel')
        index = torch.nonzero(k).flatten()
        for p in g.producers:
            kept[p] = index
    readers = {id(c.module): c for g in groups for c in g.consumers}
    for c in readers.values():  # input slices first: offsets come from the producers' current widths
        if not any(p in kept for p in c.inputs):
            continue
        parts, offset = [], 0
        for p in c.inputs:
            parts.append(kept.get(p, torch.arange(p.channels)) + offset)
            offset += p.channels
        index = torch.cat(parts)
        if isinstance(c.module, nn.Conv2d):
            _slice_param(c.module, 'weight', index, 1)
            c.module.in_channels = int(index.numel())
        else:
            _slice_bn(c.module, index)
    for p, index in kept.items():
        _slice_param(p.conv, 'weight', index, 0)
        _slice_param(p.conv, 'bias', index, 0)
        p.conv.out_channels = int(index.numel())
        if p.bn is not None:
            _slice_bn(p.bn, index)
        p.channels = int(index.numel())


# ------------------------------------------------------------------------------------------- model interface
@dataclass
class ChannelReport:
    """What a channel pruning did: prunable channels before/after, params before/after (counts), and how."""

    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    method: str  # e.g. 'layer scope, l1 importance'

    @property
    def pruned(self) -> float:
        """Fraction of the prunable channels removed."""
        return 1.0 - self.channels_after / max(self.channels_before, 1)

    def __float__(self) -> float:
        return self.pruned

    def __str__(self) -> str:
        return (f'channel pruning removed {self.pruned:.1%} of {self.channels_before:,} prunable channels '
                f'({self.method}): parameters {self.params_before:,} -> '
                f'{self.params_after:,} ({self.params_after / max(self.params_before, 1):.2f}x)')


def prunable_channels(groups: Sequence[ChannelGroup]) -> int:
    """Number of channels in the prunable (not frozen) groups."""
    return sum(g.channels for g in groups if not g.frozen)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_channels(model: nn.Module, amount: float, scope: str = 'layer', importance: str = 'l1',
                   round_to: int = 1, verbose: bool = False) -> ChannelReport:
    """Physically remove the fraction ``amount`` of the prunable output channels of a YOLOv5 model (in place).

    Unfused models only when importance is 'bn'. Returns a ChannelReport; logs one line (and a per-group table
    when ``verbose``).
    """
    _check(amount, scope, round_to)
    if importance not in IMPORTANCES:
        raise ValueError(f"channel importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    model = de_parallel(model)
    params_before = _params(model)
    groups = channel_groups(model)
    before = prunable_channels(groups)
    scores = [channel_importance(g, importance) for g in groups]
    keep = select_channels(groups, scores, amount, scope, round_to)
    if verbose:
        LOGGER.info(group_table(groups, keep))
    shrink(groups, keep)
    report = ChannelReport(before, prunable_channels(groups), params_before, _params(model),
                           f'{scope} scope, {importance} importance')
    LOGGER.info(str(report))
    return report


def group_table(groups: Sequence[ChannelGroup], keep: Sequence[Tensor] | None = None) -> str:
    """One row per group: first producer, members, readers, channels before -> kept (or why frozen)."""
    rows = [f"{'group (first producer)':<36}{'members':>8}{'readers':>8}{'channels':>10}{'kept':>8}  note"]
    for i, g in enumerate(groups):
        k = g.channels if keep is None else int(keep[i].sum())
        rows.append(f'{g.name:<36}{len(g.producers):>8}{len(g.consumers):>8}{g.channels:>10}{k:>8}  {g.frozen}')
    return '\n'.join(rows)


@torch.no_grad()
def zero_channels(groups: Sequence[ChannelGroup], keep: Sequence[Tensor]) -> None:
    """Make the channels not kept output exactly 0, without shrinking: BN scale and shift 0 (conv rows if no BN).

    With SiLU(0) = 0 the channel then feeds 0 into every reader, so `shrink` with the same masks leaves the
    model's outputs unchanged (channel-level DNS trains the masked model, then shrinks it).
    """
    for g, k in zip(groups, keep):
        if bool(k.all()):
            continue
        off = ~k
        for p in g.producers:
            if p.bn is not None:
                p.bn.weight[off.to(p.bn.weight.device)] = 0
                p.bn.bias[off.to(p.bn.bias.device)] = 0
            else:
                p.conv.weight[off.to(p.conv.weight.device)] = 0
                if p.conv.bias is not None:
                    p.conv.bias[off.to(p.conv.bias.device)] = 0


def _zero_output(p: Producer) -> Tensor:
    """Bool (channels,): True where the producer's output channel is exactly 0 (scale and shift 0, or filter and bias 0)."""
    if p.bn is not None:
        return ((p.bn.weight.detach() == 0) & (p.bn.bias.detach() == 0)).cpu()
    zero = (p.conv.weight.detach().flatten(1) == 0).all(1)
    if p.conv.bias is not None:
        zero &= p.conv.bias.detach() == 0
    return zero.cpu()


def zero_channel_masks(groups: Sequence[ChannelGroup]) -> list[Tensor]:
    """Keep-masks that drop exactly the channels every member outputs as 0 (what `zero_channels` leaves).

    A group whose channels are all 0 keeps its first one (it still outputs 0), so no layer is ever emptied.
    """
    keep = []
    for g in groups:
        if g.frozen or any(p.conv is None for p in g.producers):
            keep.append(torch.ones(g.channels, dtype=torch.bool))
            continue
        k = ~torch.stack([_zero_output(p) for p in g.producers]).all(0)
        if not bool(k.any()):
            k[0] = True
        keep.append(k)
    return keep


def shrink_zero_channels(model: nn.Module) -> ChannelReport:
    """Physically remove every prunable channel whose output is exactly 0 (e.g. a channel-DNS model); outputs unchanged."""
    model = de_parallel(model)
    params_before = _params(model)
    groups = channel_groups(model)
    before = prunable_channels(groups)
    shrink(groups, zero_channel_masks(groups))
    return ChannelReport(before, prunable_channels(groups), params_before, _params(model), 'channels that output 0')


def zero_channel_fraction(model: nn.Module) -> float:
    """Fraction of the prunable channels whose output is exactly 0 (masked by channel DNS)."""
    groups = channel_groups(de_parallel(model))
    keep = zero_channel_masks(groups)
    total = prunable_channels(groups)
    return sum(int((~k).sum()) for g, k in zip(groups, keep) if not g.frozen) / max(total, 1)


def shrink_checkpoint(f: str | Path) -> ChannelReport:
    """Remove the zero-output channels from the model(s) of a checkpoint file in place (atomic rewrite).

    Channel-DNS masks in ckpt['dns'] describe the unshrunk model and are dropped.
    """
    ckpt = load(f)
    report = None
    for k in ('model', 'ema'):
        m = ckpt.get(k)
        if isinstance(m, nn.Module):
            dtype = next(m.parameters()).dtype
            m.float()
            report = shrink_zero_channels(m)
            m.to(dtype)
    if report is None:
        raise ChannelPruningError(f'{f} holds no model to shrink')
    ckpt.pop('dns', None)
    save(ckpt, f)
    return report


def resized_layers(model: nn.Module, reference: nn.Module) -> int:
    """How many Conv2d/BatchNorm2d layers of ``model`` read or make a different number of channels than the
    same-named layer of ``reference`` (e.g. the model its YAML builds); output widths are not compared, so a
    different number of classes (Detect outputs) does not count."""
    ref = dict(de_parallel(reference).named_modules())
    n = 0
    for name, m in de_parallel(model).named_modules():
        r = ref.get(name)
        if isinstance(m, nn.Conv2d) and isinstance(r, nn.Conv2d):
            n += m.in_channels != r.in_channels  # a narrower producer shows in its readers and its BN
        elif isinstance(m, nn.BatchNorm2d) and isinstance(r, nn.BatchNorm2d):
            n += m.num_features != r.num_features
    return n


def pruned_model_for_training(model: nn.Module, nc: int) -> nn.Module:
    """An FP32, trainable copy of a channel-pruned DetectionModel; a new Detect output layer when ``nc`` differs."""
    from copy import deepcopy

    m = deepcopy(de_parallel(model)).float()
    detect = m.model[-1]
    if isinstance(detect, Detect) and detect.nc != nc:
        LOGGER.info(f'Overriding the pruned model nc={detect.nc} with nc={nc} (new Detect output layers)')
        detect.nc, detect.no = nc, nc + 5
        detect.m = nn.ModuleList(nn.Conv2d(c.in_channels, detect.no * detect.na, 1) for c in detect.m)
        m.yaml['nc'] = nc
        m._initialize_biases()
    for p in m.parameters():
        p.requires_grad = True
    return m


def amount_for_flops(model: nn.Module, flops_ratio: float, scope: str = 'layer', importance: str = 'l1',
                     round_to: int = 1, imgsz: int = 640, tol: float = 0.005) -> float:
    """The channel fraction whose `prune_channels` leaves ``flops_ratio`` of the model's FLOPs (bisection on copies).

    ``model`` is not changed. Returns the amount (fraction of prunable channels), within ``tol`` of the FLOPs ratio
    where the rounding allows.
    """
    from copy import deepcopy

    if not 0.0 < flops_ratio <= 1.0:
        raise ValueError(f'FLOPs ratio must be in (0, 1], got {flops_ratio}')
    base = model_flops(de_parallel(model), imgsz)
    lo, hi = 0.0, 0.99
    level = logging.getLogger('yolov5').level
    logging.getLogger('yolov5').setLevel(logging.WARNING)  # no report line per trial
    try:
        for _ in range(20):
            mid = (lo + hi) / 2
            m = deepcopy(de_parallel(model))
            prune_channels(m, mid, scope, importance, round_to)
            ratio = model_flops(m, imgsz) / base
            if abs(ratio - flops_ratio) <= tol:
                return mid
            lo, hi = (mid, hi) if ratio > flops_ratio else (lo, mid)
    finally:
        logging.getLogger('yolov5').setLevel(level)
    return (lo + hi) / 2
