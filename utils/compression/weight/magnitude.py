"""Unstructured weight sparsity: pick weights to prune, apply masks, measure sparsity.

The pruner is split the Torch-Pruning way:
- importance: a small callable mapping a weight tensor to non-negative float32 scores (`l1_importance`);
- ranking: `magnitude_masks` / `magnitude_threshold` turn scores into keep-masks or thresholds, with an
  exact prune count (ties broken by position, so results are deterministic);
- applying: `apply_masks`, the one mask applier shared by `prune` and Dynamic Network Surgery (utils/compression/weight/dns.py).

`prune(model, amount)` with the default `scope='layer'` zeroes the same weights as upstream YOLOv5's
`utils/torch_utils.prune` (torch.nn.utils.prune.l1_unstructured per Conv2d, `round(amount * numel)` smallest
|w| per layer) up to the choice among exactly tied magnitudes, and reports sparsity exactly instead of as a
fraction of all parameters.

Selection is a two-pass radix select on the int32 bit patterns of the float32 scores (non-negative floats
order like their bit patterns), built from `torch.bincount`: exact, linear time, and for `scope='global'`
it never concatenates the model's weights (peak extra memory is a few temporaries of the largest tensor).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from utils.compression.layers import SCOPES, de_parallel, prunable_layers

LOGGER = logging.getLogger('yolov5')

Importance = Callable[[Tensor], Tensor]

_HI_BITS = 16  # radix select: first pass on the high 16 bits of the float32 pattern, second on the low 16


def l1_importance(weight: Tensor) -> Tensor:
    """L1 magnitude criterion: |weight| as a new flat float32 tensor (computed in float32 for FP16 weights too)."""
    w = weight.detach()
    return (w.abs() if w.dtype == torch.float32 else w.float().abs_()).view(-1)  # FP16: one cast, abs in place


# ------------------------------------------------------------------------------------------------ ranking
def _check_amount(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f'amount must be a fraction of weights to prune in [0, 1), e.g. 0.3; got {amount!r}')


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'layer' (each layer loses `amount`) or 'global' (one threshold); got {scope!r}")


def _scores(tensor: Tensor, importance: Importance) -> Tensor:
    s = importance(tensor)
    if s.dtype != torch.float32 or s.numel() != tensor.numel():
        raise ValueError(f'importance must return one float32 score per weight, got {s.dtype} x {s.numel()}')
    return s.contiguous().view(-1)


def _score_source(tensors: Sequence[Tensor], importance: Importance) -> Callable[[], Iterable[Tensor]]:
    """Callable yielding each tensor's flat scores; a single tensor's scores are computed once and reused,
    a group's are recomputed on every pass so that the model's scores are never all held at once."""
    if len(tensors) == 1:
        cached = [_scores(tensors[0], importance)]
        return lambda: cached
    return lambda: (_scores(t, importance) for t in tensors)


def _kth_smallest(scores: Callable[[], Iterable[Tensor]], k: int) -> tuple[float, int, int]:
    """The k-th smallest score (k >= 1, 1-based) over a group of score tensors, exact.

    Returns (q, below, equal): q and how many scores are < q and == q. Two-pass radix select on float32 bit
    patterns (non-negative floats order like their int32 bits): a histogram of the high 16 bits finds the bucket
    holding the k-th score, a histogram of the low 16 bits inside that bucket finds the score itself.
    """
    n_hi, n_lo = 1 << (31 - _HI_BITS), 1 << _HI_BITS  # the sign bit is 0 for non-negative scores
    hist = torch.zeros(n_hi, dtype=torch.int64)
    for s in scores():
        hist += torch.bincount(s.view(torch.int32) >> _HI_BITS, minlength=n_hi).cpu()
    cum = hist.cumsum(0)
    hi = int(torch.count_nonzero(cum < k))  # first bucket whose cumulative count reaches k
    below = int(cum[hi - 1]) if hi else 0

    hist = torch.zeros(n_lo, dtype=torch.int64)
    for s in scores():
        bits = s.view(torch.int32)
        hist += torch.bincount(bits[(bits >> _HI_BITS) == hi] & (n_lo - 1), minlength=n_lo).cpu()
    cum = hist.cumsum(0)
    lo = int(torch.count_nonzero(cum < k - below))
    below += int(cum[lo - 1]) if lo else 0
    q = torch.tensor([(hi << _HI_BITS) | lo], dtype=torch.int32).view(torch.float32).item()
    return q, below, int(hist[lo])


def _group_masks(tensors: Sequence[Tensor], k: int, importance: Importance) -> list[Tensor]:
    """Keep-masks removing exactly the k lowest-scoring entries of the group.

    Order is (score, tensor position, flat index): among entries tied at the threshold the earliest go first.
    """
    if k == 0:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    scores = _score_source(tensors, importance)
    q, below, equal = _kth_smallest(scores, k)
    quota = k - below  # how many of the `equal` entries tied at q are pruned, in order
    masks = []
    for t, s in zip(tensors, scores()):
        if quota == equal:  # all ties go (the usual case): no positions needed
            drop = s <= q
        else:
            drop = s < q
            if quota:
                idx = torch.nonzero(s == q).view(-1)[:quota]
                drop[idx] = True
                quota, equal = quota - len(idx), equal - len(idx)
        masks.append(drop.logical_not_().view_as(t))
    return masks


def magnitude_masks(tensors: Sequence[Tensor],
                    amount: float,
                    scope: str = 'layer',
                    importance: Importance = l1_importance) -> list[Tensor]:
    """Keep-masks (bool, True = keep, same shape and device as each tensor) pruning the smallest |w|.

    scope='layer': each tensor loses exactly round(amount * numel) entries.
    scope='global': exactly round(amount * total numel) entries are lost over all tensors together (one threshold).
    Entries already zero count as the smallest, so re-pruning at the same amount changes nothing.
    Ties at the threshold are broken by position (earlier tensor, then lower flat index, pruned first).
    """
    _check_amount(amount)
    _check_scope(scope)
    if scope == 'layer':
        return [_group_masks([t], round(amount * t.numel()), importance)[0] for t in tensors]
    return _group_masks(tensors, round(amount * sum(t.numel() for t in tensors)), importance)


def magnitude_threshold(tensors: Sequence[Tensor],
                        amount: float,
                        scope: str = 'layer',
                        importance: Importance = l1_importance) -> list[float]:
    """Magnitude threshold q per tensor, one list entry per tensor (scope='global': the same shared q repeated).

    q is the k-th smallest |w| with k = round(amount * n) over the tensor (layer) or all tensors (global), so
    removing every |w| < q removes fewer than k weights and removing every |w| <= q at least k. q = 0.0 when k = 0.
    A threshold only; utils.dns ranks hysteresis scores with `magnitude_masks` to hit an exact sparsity.
    """
    _check_amount(amount)
    _check_scope(scope)

    def q(group: Sequence[Tensor]) -> float:
        k = round(amount * sum(t.numel() for t in group))
        return _kth_smallest(_score_source(group, importance), k)[0] if k else 0.0

    if scope == 'layer':
        return [q([t]) for t in tensors]
    return [q(tensors)] * len(tensors)


# ------------------------------------------------------------------------------------------------ applying
def apply_masks(modules: Sequence[nn.Module], masks: Sequence[Tensor]) -> None:
    """Zero each module's `.weight` where its mask is False, in place (weight *= mask; masked entries become exactly 0).

    The one mask applier of the project, used by `prune` and by DNS. Masks may live on another device.
    """
    if len(modules) != len(masks):
        raise ValueError(f'got {len(modules)} modules but {len(masks)} masks')
    with torch.no_grad():
        for m, mask in zip(modules, masks):
            w = m.weight
            if mask.shape != w.shape:
                raise ValueError(f'mask shape {tuple(mask.shape)} does not match weight shape {tuple(w.shape)} of {m}')
            # masked_fill_ rather than mul_: a NaN/inf weight that is pruned must become 0 too
            w.masked_fill_(mask.to(device=w.device, dtype=torch.bool).logical_not(), 0)


# ----------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class SparsityReport:
    """Zero counts of a model. `float(report)` is the fraction of zeros over the prunable weights."""
    prunable_zeros: int  # zeros in the prunable layers' weights
    prunable_total: int  # number of prunable weights (Conv2d/Linear .weight, minus exclusions)
    zeros: int  # zeros over all parameters (biases, BatchNorm, excluded layers included)
    total: int  # number of parameters
    layers: int  # number of prunable layers
    kinds: str = 'Conv2d/Linear'  # layer types measured as prunable

    @property
    def prunable(self) -> float:
        """Fraction of zeros over the prunable weights (0..1)."""
        return self.prunable_zeros / self.prunable_total if self.prunable_total else 0.0

    @property
    def overall(self) -> float:
        """Fraction of zeros over all parameters (0..1), the number upstream YOLOv5 reports."""
        return self.zeros / self.total if self.total else 0.0

    def __float__(self) -> float:
        return self.prunable

    def __format__(self, spec: str) -> str:
        return format(float(self), spec) if spec else str(self)

    def __str__(self) -> str:
        return (f'sparsity {self.prunable:.1%} of prunable weights ({self.prunable_total:,} in {self.layers} '
                f'{self.kinds} layers), {self.overall:.1%} of all parameters ({self.total:,})')


def _kinds(modules: Sequence[nn.Module]) -> str:
    return '/'.join(sorted({type(m).__name__ for m in modules})) or 'Conv2d/Linear'


def _zeros(t: Tensor) -> int:
    return t.numel() - int(torch.count_nonzero(t))


def sparsity(model: nn.Module, exclude_first: bool = False, exclude_detect: bool = False) -> SparsityReport:
    """Count zeros in the prunable weights (see `prunable_layers`) and in all parameters of `model`."""
    layers = prunable_layers(model, exclude_first, exclude_detect)
    zeros = {id(p): (_zeros(p), p.numel()) for p in de_parallel(model).parameters()}  # each shared tensor once
    weights = [zeros.get(id(m.weight)) or (_zeros(m.weight), m.weight.numel()) for _, m in layers]
    return SparsityReport(prunable_zeros=sum(z for z, _ in weights),
                          prunable_total=sum(n for _, n in weights),
                          zeros=sum(z for z, _ in zeros.values()),
                          total=sum(n for _, n in zeros.values()),
                          layers=len(layers),
                          kinds=_kinds([m for _, m in layers]))


def layer_sparsity(model: nn.Module,
                   exclude_first: bool = False,
                   exclude_detect: bool = False) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, weight shape, fraction of zero weights) for each prunable layer."""
    return [(name, tuple(m.weight.shape), _zeros(m.weight) / max(m.weight.numel(), 1))
            for name, m in prunable_layers(model, exclude_first, exclude_detect)]


def collapsed_layers(model: nn.Module,
                     exclude_first: bool = False,
                     exclude_detect: bool = False,
                     min_dead: float = 0.5) -> list[tuple[str, float, int, int]]:
    """Prunable layers that pruning has all but removed: (name, fraction of zero weights, empty outputs, outputs).

    An output (a conv filter, a Linear row) is empty when all its weights are zero; it then passes only its bias /
    BatchNorm shift. Layers where at least ``min_dead`` (fraction) of the outputs are empty are returned. Global
    pruning at high amounts can do this to a whole layer (yolov5n at 90 %: model.7.conv keeps 1 of 294,912
    weights), cutting every path through it.
    """
    out = []
    for name, m in prunable_layers(model, exclude_first, exclude_detect):
        rows = m.weight.detach().flatten(1)
        dead = int((rows == 0).all(1).sum())
        if rows.shape[0] and dead >= min_dead * rows.shape[0]:
            out.append((name, _zeros(m.weight) / m.weight.numel(), dead, rows.shape[0]))
    return out


def format_table(rows: Sequence[tuple[str, tuple[int, ...], float]]) -> str:
    """Text table of `layer_sparsity` rows (layer, shape, weights, zeros %) with a weighted total line."""
    w = max([len('layer')] + [len(r[0]) for r in rows])
    lines = [f"{'layer':<{w}}  {'shape':<20} {'weights':>11} {'zeros':>7}"]
    total = zeros = 0.0
    for name, shape, frac in rows:
        n = math.prod(shape)
        total, zeros = total + n, zeros + frac * n
        lines.append(f'{name:<{w}}  {str(shape):<20} {n:>11,} {frac:>7.1%}')
    lines.append(f"{'total':<{w}}  {'':<20} {int(total):>11,} {zeros / total if total else 0.0:>7.1%}")
    return '\n'.join(lines)


def sweep_amounts(step: float = 0.1, stop: float = 0.9) -> list[float]:
    """Pruning amounts for a sensitivity sweep: 0.0 (the dense baseline), step, 2*step, ... up to stop inclusive."""
    if not 0 < step < 1 or not 0 <= stop < 1:
        raise ValueError(f'need 0 < step < 1 and 0 <= stop < 1 (fractions of weights), got step={step}, stop={stop}')
    return [round(i * step, 10) for i in range(int(math.floor(stop / step + 1e-9)) + 1)]


# ------------------------------------------------------------------------------------------------ pruning
def prune(model: nn.Module,
          amount: float = 0.3,
          scope: str = 'layer',
          exclude_first: bool = False,
          exclude_detect: bool = False,
          verbose: bool = False) -> SparsityReport:
    """Permanently zero the smallest-|w| weights of the prunable layers, in place; return the resulting sparsity.

    amount: fraction of weights to zero, [0, 1); scope='layer' removes that fraction from every layer (upstream's
    behaviour), scope='global' from all prunable weights with one shared threshold. Biases and BatchNorm are never
    touched. Works for fused/unfused, FP32/FP16, CPU/CUDA models; no copy of the model is made.
    """
    _check_amount(amount)
    _check_scope(scope)
    modules = [m for _, m in prunable_layers(model, exclude_first, exclude_detect)]
    if scope == 'layer':
        for m in modules:  # one layer's mask alive at a time
            apply_masks([m], magnitude_masks([m.weight], amount, 'layer'))
    else:
        apply_masks(modules, magnitude_masks([m.weight for m in modules], amount, 'global'))
    report = sparsity(model, exclude_first, exclude_detect)
    skipped = [s for s, on in (('first conv', exclude_first), ('Detect outputs', exclude_detect)) if on]
    LOGGER.info(f"Pruned {_kinds(modules)} weights {'layer-wise' if scope == 'layer' else 'globally'} to "
                f"{amount:.1%} ({len(modules)} layers{', excluding ' + ' and '.join(skipped) if skipped else ''}): "
                f'{report}')
    collapsed = collapsed_layers(model, exclude_first, exclude_detect)
    if collapsed:
        shown = ', '.join(f'{n} ({d}/{c} outputs empty, {z:.2%} zeros)' for n, z, d, c in collapsed[:3])
        LOGGER.warning(f'WARNING ⚠️ pruning emptied most outputs of {len(collapsed)} layer(s): {shown}'
                       f"{', ...' if len(collapsed) > 3 else ''}; they pass little more than their bias. "
                       f"{'Layer-wise scope or a lower amount avoids this' if scope == 'global' else 'Use a lower amount'}"
                       f' (fine-tuning with DNS, train.py --dns, can splice weights back)')
    if verbose:
        LOGGER.info(format_table(layer_sparsity(model, exclude_first, exclude_detect)))
    return report
