"""Dynamic Network Surgery (DNS): learn binary weight masks T while training, so pruned weights can come back.

Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NIPS 2016 (arXiv 1608.04493), with a target
sparsity reached through the gradual schedule of Zhu & Gupta 2017. How to use it: docs/weight-pruning.md.

The network computes with W ⊙ T. The optimizer updates *every* entry of W with the gradient taken at W ⊙ T
(straight-through), so a masked weight that the loss keeps pushing grows back and is *spliced*, and a kept
weight that shrinks is *pruned*. Masks follow the hysteresis rule `mask_rule` with thresholds a = (1-δ)q,
b = (1+δ)q, where q is the one threshold for which the rule masks exactly the scheduled fraction s_k of the weights
(per tensor or over all of them): ranking |w|/(1-δ) for kept and |w|/(1+δ) for masked weights and cutting at s_k
applies the rule and hits s_k in one exact selection (`hysteresis_scores`). Taking q as the plain |w| quantile
instead leaves the sparsity lagging the schedule by the weights inside the band (several points at 70 %), which
then have to be cut at once at the end of the surgery.

Between optimizer steps every DNS-managed parameter holds W ⊙ T (exactly zero where masked); a dense copy of W
and the masks live in the DNS object, outside the module. So forward passes (gradient accumulation included),
EMA updates, `state_dict()` and pickling all see plain, masked weights that upstream YOLOv5 loads.

How train.py calls it (YOLOv5 v7.0 loop; AMP, accumulation, EMA and DDP):

    dns = DNS(model, target=0.5, surgery_steps=n_surgery, scope='layer')    # after model.to(device)
    if resume: dns.load_state_dict(ckpt['dns'])
    ...
    scaler.scale(loss).backward()                      # grads at W ⊙ T, non-zero at masked entries too
    if ni - last_opt_step >= accumulate:
        scaler.unscale_(optimizer)                     # before anything reads gradients (clipping)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        dns.before_step()                              # parameters <- dense W
        scaler.step(optimizer); scaler.update(); optimizer.zero_grad()
        dns.after_step()                               # maybe update T (σ(k)); parameters <- W ⊙ T
        if ema: ema.update(model)                      # averages effective weights W ⊙ T
    # end of epoch, before val and save:
    dns.apply_to(ema.ema); LOGGER.info(dns.layer_table()); log(dns.summary()); dns.reset_counters()
    ckpt['dns'] = dns.state_dict()

DNS never reads gradients, so it is indifferent to GradScaler's scaling; `scaler.unscale_` is only needed for
whatever else reads gradients (clipping). One `before_step()`/`after_step()` pair per optimizer step (not per
backward); a step skipped by GradScaler still counts as a step.

DDP: construct DNS on the raw or the wrapped model, before or after wrapping (the first before_step merges the
live kept entries with the stored masked ones, so DDP's initial broadcast is kept). Every rank calls the hooks.
Assumption: after DDP's gradient all-reduce and identical optimizer steps the weights are bit-identical on all
ranks, so mask updates computed locally agree; the update decisions come from a generator seeded identically on all
ranks and are also broadcast from rank 0. `sync_masks=True` additionally broadcasts the masks from rank 0
after each update, for setups where that assumption may not hold.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.compression.layers import de_parallel, distributed, prunable_layers
from utils.compression.surgery import DNSConfig, SurgeryBase, hysteresis_scores
from utils.compression.weight.magnitude import apply_masks, magnitude_masks, sparsity
from utils.general import LOGGER, colorstr


def mask_rule(w: Tensor, a: float | Tensor, b: float | Tensor, t_prev: Tensor) -> Tensor:
    """Hysteresis h(w; a, b, t_prev) -> bool keep-mask: False if |w| < a, True if |w| >= b, t_prev in between.

    a <= b are magnitudes in the units of w; t_prev is the previous mask (bool, or 0/1 of any dtype).
    """
    magnitude = w.abs()
    return (magnitude >= b) | (t_prev.bool() & (magnitude >= a))


def _as_scores(scores: Tensor) -> Tensor:
    return scores


def exact_cut(weights: list[Tensor], keep: list[Tensor], amount: float, scope: str = 'layer') -> list[Tensor]:
    """Flip the fewest mask entries so that exactly round(amount * n) entries are pruned (bool masks out).

    n counts the entries of each tensor (scope 'layer') or of all tensors together ('global'). Missing pruning
    removes the smallest-magnitude kept weights; excess pruning splices back the largest-magnitude masked ones,
    so the decisions DNS made inside the hysteresis band survive wherever the target allows.
    """
    groups = [[i] for i in range(len(weights))] if scope == 'layer' else [list(range(len(weights)))]
    out = list(keep)
    for group in groups:
        magnitude = torch.cat([weights[i].detach().abs().flatten().float() for i in group])
        kept = torch.cat([keep[i].bool().flatten() for i in group])
        missing = round(amount * magnitude.numel()) - int((~kept).sum())
        if missing > 0:  # too few pruned: prune the smallest kept weights
            kept[torch.where(kept, magnitude, math.inf).topk(missing, largest=False).indices] = False
        elif missing < 0:  # too many pruned: splice the largest masked weights
            kept[torch.where(kept, -math.inf, magnitude).topk(-missing).indices] = True
        for i, part in zip(group, kept.split([weights[i].numel() for i in group])):
            out[i] = part.view(weights[i].shape)
    return out


class DNS(SurgeryBase):
    """Dynamic Network Surgery on the Conv2d/Linear weights of any nn.Module (see the module docstring).

    Args (fractions, counts in optimizer steps): target sparsity; surgery_steps; scope 'layer' | 'global';
    band δ; gamma, power of σ(k); s_init (None = the model's current fraction of zero weights); seed;
    exclude_first, exclude_detect (as in utils.compression.weight.magnitude.prune); sync_masks (DDP, see module docstring).
    Construct after the model is on its device and in its training dtype. Initial masks keep every non-zero weight.

    Storage per managed weight W (outside the module, so checkpoints stay plain):
    - `keep`: the mask T (bool, True = kept); replaced, never modified in place;
    - `off`: the same mask as 1.0 where masked (T == 0), 0.0 where kept, in W's dtype, for the per-step
      multiply-adds (~5x cheaper on CPU than bool masking);
    - `dense`: between steps, W as of the last step (dropped once the masks are frozen).
    The per-step swap exchanges storages instead of copying: before_step points the parameter at `dense`
    (`param.data = dense`, same shape, dtype and device, so autograd and DDP hooks are untouched), after_step
    writes W ⊙ T into the storage the parameter had, keeps the updated dense storage and points the parameter
    back. One fused multiply-add per step: 12 ms on yolov5s with one (shared) CPU thread, where in-place
    restore/copy/mask passes took 30 ms (micro-benchmark; benchmarks/dns_bench.py prints the hook time).
    The first before_step after construction or load_state_dict merges in place instead (live kept entries +
    stored masked ones), so writes made before training starts (DDP's broadcast at wrap time, loading weights)
    are kept. Between steps, write into the managed weights only through DNS (load_state_dict): other writes
    would be replaced by the dense copy.
    """

    def __init__(self, model: nn.Module, target: float, surgery_steps: int, *, scope: str = 'layer',
                 band: float = 0.1, gamma: float = 1e-4, power: float = 1.0, s_init: float | None = 0.0,
                 seed: int = 0, exclude_first: bool = False, exclude_detect: bool = False,
                 sync_masks: bool = False) -> None:
        cfg = DNSConfig(target=target, surgery_steps=surgery_steps, scope=scope, band=band, gamma=gamma,
                        power=power, s_init=0.0 if s_init is None else s_init, seed=seed,
                        exclude_first=exclude_first, exclude_detect=exclude_detect, sync_masks=sync_masks)
        layers = prunable_layers(model, exclude_first=exclude_first, exclude_detect=exclude_detect)
        if not layers:
            raise ValueError('DNS found no prunable Conv2d/Linear layers in the model')
        self.layer_names = [name for name, _ in layers]
        self.modules = [module for _, module in layers]
        weights = self._weights()
        keep = [w.detach() != 0 for w in weights]
        self.off = [(~k).to(w.dtype) for k, w in zip(keep, weights)]
        self.dense = [w.detach().clone() for w in weights]  # dropped (empty) once the masks are frozen
        self._fresh = True  # next before_step merges in place rather than swapping storages
        names = [f'{name}.weight' if name else 'weight' for name in self.layer_names]  # no 'module.' prefix
        super().__init__(cfg, names, keep, s_init_from_masks=s_init is None)

    # ---- step hooks (SurgeryBase.before_step / after_step / finish call these)

    def _device(self) -> torch.device:
        return self.off[0].device

    def _restore_dense(self) -> None:
        """Parameters <- dense W (merged in place the first time, then by swapping storages)."""
        weights = self._weights()
        if (weights[0].dtype, weights[0].device) != (self.off[0].dtype, self.off[0].device):
            raise RuntimeError('model weights changed dtype/device after DNS was created: '
                               'create DNS after model.to()')
        if self._fresh:  # W ⊙ T (live) + W_dense ⊙ (1 - T): keeps any write made to kept entries since
            self._write_dense()
            self._fresh = False
        else:  # swap: the parameter gets the dense storage, `dense` holds the masked one as scratch
            for i, w in enumerate(weights):
                w.data, self.dense[i] = self.dense[i], w.data

    def _mask_parameters(self) -> None:
        """Parameters <- W ⊙ T; during surgery the dense W stays in `dense`."""
        # W - W ⊙ (1 - T) = W ⊙ T, exactly 0 where masked. In the hot path this multiply-add replaces
        # utils.compression.weight.magnitude.apply_masks (bool masked_fill_, ~70 ms per step on yolov5s with one CPU thread); masking
        # outside the step (finish, apply_to, load_state_dict) goes through apply_masks, the project's applier.
        weights = self._weights()
        if self.frozen:
            torch._foreach_addcmul_(weights, weights, self.off, value=-1)
        else:
            for i, (w, off) in enumerate(zip(weights, self.off)):
                torch.addcmul(w, w, off, value=-1, out=self.dense[i])  # W ⊙ T into the scratch storage
                self.dense[i], w.data = w.data, self.dense[i]  # keep dense W, parameter <- W ⊙ T

    def _write_dense(self) -> None:
        """W ⊙ T (live) + W_dense ⊙ (1 - T): masked entries get their dense values, kept ones stay as they are."""
        torch._foreach_addcmul_(self._weights(), self.dense, self.off)

    def _zero_masked(self) -> None:
        apply_masks(self.modules, self.masks())

    # ---- surgery

    def _update_masks(self, amount: float) -> None:
        """Hysteresis update of every mask to exactly the sparsity `amount` (see `hysteresis_scores`)."""
        scores = [hysteresis_scores(w, keep, self.cfg.band) for w, keep in zip(self._weights(), self.keep)]
        self._set_masks(magnitude_masks(scores, amount, self.cfg.scope, importance=_as_scores))

    def _final_cut(self) -> None:
        """Exact cut to the target (see `exact_cut`), then freeze: later steps only re-apply the masks."""
        self._set_masks(exact_cut([w.detach() for w in self._weights()], self.keep, self.cfg.target, self.cfg.scope))
        self.frozen = True
        self.dense = []  # frozen masked entries never return: their values are no longer needed

    def _set_masks(self, keep: list[Tensor]) -> None:
        """Replace the masks by bool keep-masks (rank 0's if sync_masks), counting pruned/spliced entries."""
        for i, new in enumerate(keep):
            self._replace_mask(i, new)
            torch.logical_not(new, out=self.off[i])
        if self.cfg.sync_masks and distributed():
            for i, off in enumerate(self.off):
                dist.broadcast(off, src=0)
                self.keep[i] = off == 0
        self._count_masked()

    def _weights(self) -> list[Tensor]:
        return [module.weight for module in self.modules]

    # ---- other models (EMA)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Zero, in place, the masked entries of a model with the same layer names (the EMA copy, a half copy)."""
        found = dict(de_parallel(model).named_modules())
        modules = []
        for name, off in zip(self.layer_names, self.off):
            weight = getattr(found.get(name), 'weight', None)
            if weight is None or weight.shape != off.shape:
                raise ValueError(f'DNS.apply_to: model has no weight {name}.weight of shape {tuple(off.shape)}')
            modules.append(found[name])
        apply_masks(modules, self.masks())

    # ---- reports (masks, masks_by_name, sparsity, summary, reset_counters: SurgeryBase)

    def _model_sparsity(self, model: nn.Module) -> float:
        r = sparsity(model)
        LOGGER.info(f'{colorstr("sparsity: ")}{r}')
        return float(r)

    def layer_table(self) -> str:
        """Per-layer table: name, shape, sparsity, pruned and spliced since the last reset_counters(), total."""
        rows = [f"{'layer':<40}{'shape':>22}{'sparsity':>10}{'pruned':>10}{'spliced':>10}"]
        for name, off, p, s in zip(self.names, self.off, self._pruned_count, self._spliced_count):
            shape = 'x'.join(str(d) for d in off.shape)
            rows.append(f'{name:<40}{shape:>22}{int(off.count_nonzero()) / off.numel():>10.1%}{int(p):>10}{int(s):>10}')
        rows.append(self._total_row(22))
        return '\n'.join(rows)

    # ---- checkpoints (--resume)

    def state_dict(self) -> dict:
        """Compact CPU state: bool masks and masked values by parameter name, step, frozen, config, RNG state."""
        masked = {} if self.frozen else {name: dense[~keep].cpu()
                                         for name, dense, keep in zip(self.names, self.dense, self.keep)}
        return {'masks': self._masks_state(), 'pruned_values': masked, **self._progress_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` (its config replaces this one's); the model's masked entries are re-zeroed."""
        masks = state['masks']
        if set(masks) != set(self.names):
            raise ValueError(f'DNS state holds masks for {len(masks)} weights that do not match this model '
                             f'({len(self.names)} prunable weights); check exclude_first/exclude_detect')
        for name, off in zip(self.names, self.off):
            if masks[name].shape != off.shape:
                raise ValueError(f'DNS state mask {name} has shape {tuple(masks[name].shape)}, '
                                 f'model weight {tuple(off.shape)}')
        self._load_progress(state)
        self._set_masks([masks[name].to(keep.device, torch.bool) for name, keep in zip(self.names, self.keep)])
        self.dense = [] if self.frozen else [torch.zeros_like(w) for w in self._weights()]
        self._fresh = True
        for name, dense, keep in zip(self.names, self.dense, self.keep):
            dense.masked_scatter_(~keep, state['pruned_values'][name].to(dense.device, dense.dtype))
        self._zero_masked()
        self.reset_counters()
