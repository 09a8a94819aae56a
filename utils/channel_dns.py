"""Channel-level Dynamic Network Surgery: DNS whose masks switch whole output channels off and on.

The weight-level DNS of utils/dns.py masks single weights; here a mask entry is one channel of a channel group
(utils/channel_groups.py: a conv's outputs, tied across residual adds). A masked channel has BatchNorm scale and
shift 0, so it outputs exactly 0 (SiLU(0) = 0) and the model computes what the physically smaller model computes;
removing the masked channels at the end (`shrink_zero_channels`) changes no output.

Straight-through, as in DNS: between optimizer steps the managed parameters (each producer's BN weight and bias,
or conv rows and bias without BN) hold their masked values; `before_step` gives the masked channels their dense
values back, so the optimizer updates them with the gradient taken at the masked point. For the BN scale that
gradient is sum(dL/dy * x_hat), non-zero while the channel is off (its conv still runs), so a channel the loss
wants grows back and is spliced; the conv weights of an off channel get no loss gradient (gamma = 0 multiplies
them). The importance is therefore |gamma| by default ('bn'); 'l1' (filter magnitude) can only splice a channel back
when kept channels shrink below it.

Masks follow the same hysteresis rule and schedule as DNS (`hysteresis_scores` on per-channel scores, exact count
per update through `utils.channel_pruning.select_channels`), with σ(k) update decisions drawn identically on every
rank; under torch.distributed the masks are also broadcast from rank 0 after every update, so all ranks always hold
identical channel masks. The hook interface is DNS's (before_step / after_step / finish / apply_to / state_dict), so
train.py drives both the same way; train.py shrinks best.pt and last.pt when training ends.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.channel_groups import ChannelGroup, channel_groups
from utils.channel_pruning import (IMPORTANCES, channel_importance, prunable_channels, select_channels,
                                    zero_channel_masks)
from utils.dns import DNSConfig, _distributed, cubic_schedule, hysteresis_scores, update_probability
from utils.sparsity import unwrap_model


@dataclass
class ChannelDNSConfig(DNSConfig):
    """DNSConfig where target is the fraction of prunable channels; plus the channel importance and rounding."""

    importance: str = 'bn'  # 'bn' |gamma| or 'l1' mean |w| of the filters
    round_to: int = 1  # kept channels per group rounded up to a multiple of this

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.importance not in IMPORTANCES:
            raise ValueError(f"channel importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ValueError(f'round_to must be an integer >= 1, got {self.round_to!r}')


def _managed(model: nn.Module, group: ChannelGroup) -> list[tuple[str, Tensor]]:
    """(parameter name, parameter) whose rows are switched off with a channel of ``group``."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for p in group.producers:
        params = (p.bn.weight, p.bn.bias) if p.bn is not None else (p.conv.weight, p.conv.bias)
        out += [(names[id(t)], t) for t in params if t is not None]
    return out


class ChannelDNS:
    """Dynamic Network Surgery over the prunable channel groups of a YOLOv5 model (see the module docstring).

    Args as utils.dns.DNS (target = fraction of prunable channels), plus importance ('bn' | 'l1') and round_to.
    Construct after the model is on its device. Initial masks keep every channel that is not already off.
    """

    def __init__(self, model: nn.Module, target: float, surgery_steps: int, *, scope: str = 'layer',
                 band: float = 0.1, gamma: float = 1e-4, power: float = 1.0, s_init: float | None = 0.0,
                 seed: int = 0, importance: str = 'bn', round_to: int = 1, exclude_first: bool = False,
                 exclude_detect: bool = False, sync_masks: bool = True) -> None:
        self.cfg = ChannelDNSConfig(target=target, surgery_steps=surgery_steps, scope=scope, band=band, gamma=gamma,
                                    power=power, s_init=0.0 if s_init is None else s_init, seed=seed,
                                    exclude_first=exclude_first, exclude_detect=exclude_detect,
                                    sync_masks=sync_masks, importance=importance, round_to=round_to)
        model = unwrap_model(model)
        groups = channel_groups(model)
        if exclude_first:  # the group of the first conv keeps its channels
            groups = [g for g in groups if not any(p.name.startswith('model.0.') for p in g.producers)]
        self.groups = [g for g in groups if not g.frozen]
        if not self.groups:
            raise ValueError('channel DNS found no prunable channel groups in the model')
        self.names = [g.name for g in self.groups]
        self.params = [_managed(model, g) for g in self.groups]
        self.keep = zero_channel_masks(self.groups)  # channels already off stay off at first
        self._numel = prunable_channels(self.groups)
        self.dense = [[t.detach().clone() for _, t in ps] for ps in self.params]
        self.step = 0
        self.frozen = False
        self.generator = torch.Generator().manual_seed(seed)
        self._in_step = False
        self.reset_counters()
        if s_init is None:
            self.cfg = replace(self.cfg, s_init=min(self.sparsity, target))

    # ---- the two hooks around optimizer.step() (as utils.dns.DNS)

    @torch.no_grad()
    def before_step(self) -> None:
        """Masked channels get their dense values back so the optimizer updates them (once per optimizer step)."""
        if not self.frozen:
            for ps, dense, keep in zip(self.params, self.dense, self.keep):
                off = ~keep
                if bool(off.any()):
                    for (_, t), d in zip(ps, dense):
                        t[off.to(t.device)] = d[off.to(d.device)]
        self._in_step = True

    @torch.no_grad()
    def after_step(self) -> None:
        """Count the step; during surgery keep the dense values and maybe update the masks; zero masked channels."""
        if not self._in_step:
            raise RuntimeError('ChannelDNS.after_step() without before_step()')
        self.step += 1
        if not self.frozen:
            for ps, dense in zip(self.params, self.dense):
                for (_, t), d in zip(ps, dense):
                    d.copy_(t)
            if self._draw_update():
                self._update_masks(self.scheduled_sparsity)
            if self.step >= self.cfg.surgery_steps:
                self._final_cut()
        self._zero()
        self._in_step = False

    @torch.no_grad()
    def finish(self) -> None:
        """End the surgery now: masks to exactly the target from the dense values, frozen, channels zeroed."""
        if self.frozen:
            return
        if self._in_step:
            raise RuntimeError('ChannelDNS.finish() inside an optimizer step: call it after after_step()')
        for ps, dense in zip(self.params, self.dense):
            for (_, t), d in zip(ps, dense):
                t.copy_(d)
        self._final_cut()
        self._zero()

    # ---- surgery

    @property
    def scheduled_sparsity(self) -> float:
        """s_k: the fraction of prunable channels the schedule asks for at the current step."""
        return cubic_schedule(self.step, self.cfg.surgery_steps, self.cfg.target, self.cfg.s_init)

    def _draw_update(self) -> bool:
        u = torch.rand(1, generator=self.generator)
        if _distributed():
            u = u.to(self.params[0][0][1].device)
            dist.broadcast(u, src=0)
        return float(u) < update_probability(self.step, self.cfg.gamma, self.cfg.power)

    def _update_masks(self, amount: float) -> None:
        """Hysteresis update: scores |s|/(1-δ) kept, |s|/(1+δ) masked, the lowest ``amount`` of them go."""
        scores = [hysteresis_scores(channel_importance(g, self.cfg.importance), keep, self.cfg.band)
                  for g, keep in zip(self.groups, self.keep)]
        self._set_masks(select_channels(self.groups, scores, amount, self.cfg.scope, self.cfg.round_to))

    def _final_cut(self) -> None:
        self._update_masks(self.cfg.target)
        self.frozen = True
        self.dense = []

    def _set_masks(self, keep: list[Tensor]) -> None:
        if self.cfg.sync_masks and _distributed():
            device = self.params[0][0][1].device
            flat = torch.cat(keep).to(device=device, dtype=torch.uint8)
            dist.broadcast(flat, src=0)
            keep = list(flat.bool().cpu().split([k.numel() for k in keep]))
        for i, new in enumerate(keep):
            old = self.keep[i]
            self._pruned_count[i] += int((old & ~new).sum())
            self._spliced_count[i] += int((new & ~old).sum())
            self.keep[i] = new.clone()

    @torch.no_grad()
    def _zero(self) -> None:
        for ps, keep in zip(self.params, self.keep):
            off = ~keep
            if bool(off.any()):
                for _, t in ps:
                    t[off.to(t.device)] = 0

    # ---- other models (EMA)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Zero the masked channels of a model with the same parameter names and shapes (the EMA copy)."""
        found = dict(unwrap_model(model).named_parameters())
        for ps, keep in zip(self.params, self.keep):
            for name, t in ps:
                other = found.get(name)
                if other is None or other.shape != t.shape:
                    raise ValueError(f'ChannelDNS.apply_to: model has no parameter {name} of shape {tuple(t.shape)}')
                other[(~keep).to(other.device)] = 0

    # ---- reports

    def masks(self) -> list[Tensor]:
        """Bool keep-masks per channel group (True = kept), in `names` order."""
        return list(self.keep)

    def masks_by_name(self) -> dict[str, Tensor]:
        """Keep-masks keyed by the group's first producer, e.g. 'model.2.cv1.conv'."""
        return dict(zip(self.names, self.masks()))

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable channels that are masked."""
        return sum(int((~k).sum()) for k in self.keep) / self._numel

    def reset_counters(self) -> None:
        self._pruned_count = [0] * len(self.groups)
        self._spliced_count = [0] * len(self.groups)

    def summary(self) -> dict[str, float | int]:
        """For results.csv: channel sparsity (fraction), channels pruned and spliced since reset_counters()."""
        return {'sparsity': self.sparsity, 'pruned': sum(self._pruned_count), 'spliced': sum(self._spliced_count)}

    def layer_table(self) -> str:
        """Per-group table: first producer, channels, masked fraction, pruned/spliced since reset_counters()."""
        rows = [f"{'channel group (first producer)':<40}{'channels':>10}{'masked':>10}{'pruned':>10}{'spliced':>10}"]
        for name, keep, p, s in zip(self.names, self.keep, self._pruned_count, self._spliced_count):
            rows.append(f'{name:<40}{keep.numel():>10}{1 - keep.float().mean().item():>10.1%}{p:>10}{s:>10}')
        total = self.summary()
        phase = 'frozen' if self.frozen else f'surgery {self.step}/{self.cfg.surgery_steps}'
        rows.append(f"{'total (' + phase + ')':<40}{self._numel:>10}{total['sparsity']:>10.1%}"
                    f"{total['pruned']:>10}{total['spliced']:>10}")
        return '\n'.join(rows)

    # ---- checkpoints (--resume)

    def state_dict(self) -> dict:
        """CPU state: keep-masks by group, dense values of the managed parameters (during surgery), step, config, RNG."""
        dense = {} if self.frozen else {name: d.cpu().clone() for ps, ds in zip(self.params, self.dense)
                                        for (name, _), d in zip(ps, ds)}
        return {'granularity': 'channel', 'masks': {n: k.clone() for n, k in self.masks_by_name().items()},
                'dense': dense, 'step': self.step, 'frozen': self.frozen, 'config': asdict(self.cfg),
                'rng': self.generator.get_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the model's masked channels are re-zeroed."""
        if state.get('granularity') != 'channel':
            raise ValueError('the checkpoint holds weight-level DNS state; resume it without --dns-granularity channel')
        masks = state['masks']
        if list(masks) != self.names or any(masks[n].numel() != k.numel() for n, k in zip(self.names, self.keep)):
            raise ValueError(f'channel DNS state holds {len(masks)} channel groups that do not match this model '
                             f'({len(self.names)} groups)')
        self.cfg = ChannelDNSConfig(**state['config'])
        self.step, self.frozen, self._in_step = int(state['step']), bool(state['frozen']), False
        self.generator.set_state(state['rng'])
        self.keep = [masks[n].bool().cpu().clone() for n in self.names]
        self.dense = [] if self.frozen else [[state['dense'][name].to(t.device, t.dtype, copy=True) for name, t in ps]
                                            for ps in self.params]  # copies: later steps must not write into `state`
        self._zero()
        self.reset_counters()


def channel_flops_line(model: nn.Module, imgsz: int = 640) -> str:
    """'GFLOPs 4.1 -> 2.0 at 640 px once the masked channels are removed' for a model with zeroed channels."""
    from copy import deepcopy

    from utils.channel_pruning import shrink_zero_channels
    from utils.torch_utils import model_flops

    m = deepcopy(unwrap_model(model)).float()
    before = model_flops(m, imgsz)
    shrink_zero_channels(m)
    after = model_flops(m, imgsz)
    return f'GFLOPs {before:.2f} -> {after:.2f} at {imgsz} px ({after / before if before else math.nan:.2f}x)'
