"""Channel-level Dynamic Network Surgery: DNS whose masks switch whole output channels off and on.

The weight-level DNS of utils/compression/weight/dns.py masks single weights; here a mask entry is one channel of a channel group
(utils/compression/channel/groups.py: a conv's outputs, tied across residual adds). A masked channel has BatchNorm scale and
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
per update through `utils.compression.channel.pruning.select_channels`), with σ(k) update decisions drawn identically on every
rank; under torch.distributed the masks are also broadcast from rank 0 after every update, so all ranks always hold
identical channel masks. The step protocol, schedule, update draws and reports are utils.compression.surgery.SurgeryBase's, shared
with DNS (before_step / after_step / finish / apply_to / state_dict), so train.py drives both the same way; train.py
shrinks best.pt and last.pt when training ends (`finish_file`).
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.compression.channel.groups import ChannelGroup, channel_groups
from utils.compression.channel.pruning import (IMPORTANCES, channel_importance, select_channels, shrink_checkpoint,
                                               shrink_zero_channels, zero_channel_fraction, zero_channel_masks)
from utils.compression.layers import de_parallel, distributed
from utils.compression.surgery import DNSConfig, SurgeryBase, hysteresis_scores
from utils.general import LOGGER, colorstr
from utils.torch_utils import model_flops


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


class ChannelDNS(SurgeryBase):
    """Dynamic Network Surgery over the prunable channel groups of a YOLOv5 model (see the module docstring).

    Args as utils.compression.weight.dns.DNS (target = fraction of prunable channels), plus importance ('bn' | 'l1') and round_to.
    Construct after the model is on its device. Initial masks keep every channel that is not already off.
    The step hooks, schedule, update draws, counters and reports are SurgeryBase's (utils/compression/surgery.py).
    """

    config_class = ChannelDNSConfig

    def __init__(self, model: nn.Module, target: float, surgery_steps: int, *, scope: str = 'layer',
                 band: float = 0.1, gamma: float = 1e-4, power: float = 1.0, s_init: float | None = 0.0,
                 seed: int = 0, importance: str = 'bn', round_to: int = 1, exclude_first: bool = False,
                 exclude_detect: bool = False, sync_masks: bool = True) -> None:
        cfg = ChannelDNSConfig(target=target, surgery_steps=surgery_steps, scope=scope, band=band, gamma=gamma,
                               power=power, s_init=0.0 if s_init is None else s_init, seed=seed,
                               exclude_first=exclude_first, exclude_detect=exclude_detect,
                               sync_masks=sync_masks, importance=importance, round_to=round_to)
        model = de_parallel(model)
        groups = channel_groups(model)
        if exclude_first:  # the group of the first conv keeps its channels
            groups = [g for g in groups if not any(p.name.startswith('model.0.') for p in g.producers)]
        self.groups = [g for g in groups if not g.frozen]
        if not self.groups:
            raise ValueError('channel DNS found no prunable channel groups in the model')
        self.params = [_managed(model, g) for g in self.groups]
        self.dense = [[t.detach().clone() for _, t in ps] for ps in self.params]
        # channels already off stay off at first
        super().__init__(cfg, [g.name for g in self.groups], zero_channel_masks(self.groups),
                         s_init_from_masks=s_init is None)

    # ---- step hooks (SurgeryBase.before_step / after_step / finish call these)

    def _device(self) -> torch.device:
        return self.params[0][0][1].device

    def _restore_dense(self) -> None:
        """Masked channels get their dense values back."""
        for ps, dense, keep in zip(self.params, self.dense, self.keep):
            off = ~keep
            if bool(off.any()):
                for (_, t), d in zip(ps, dense):
                    t[off.to(t.device)] = d[off.to(d.device)]

    def _mask_parameters(self) -> None:
        """During surgery the parameters' values become the dense ones; then the masked channels are zeroed."""
        if not self.frozen:
            for ps, dense in zip(self.params, self.dense):
                for (_, t), d in zip(ps, dense):
                    d.copy_(t)
        self._zero_masked()

    def _write_dense(self) -> None:
        for ps, dense in zip(self.params, self.dense):
            for (_, t), d in zip(ps, dense):
                t.copy_(d)

    def _zero_masked(self) -> None:
        for ps, keep in zip(self.params, self.keep):
            off = ~keep
            if bool(off.any()):
                for _, t in ps:
                    t[off.to(t.device)] = 0

    # ---- surgery

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
        if self.cfg.sync_masks and distributed():
            flat = torch.cat(keep).to(device=self._device(), dtype=torch.uint8)
            dist.broadcast(flat, src=0)
            keep = list(flat.bool().cpu().split([k.numel() for k in keep]))
        for i, new in enumerate(keep):
            self._replace_mask(i, new.clone())
        self._count_masked()

    # ---- other models (EMA)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Zero the masked channels of a model with the same parameter names and shapes (the EMA copy)."""
        found = dict(de_parallel(model).named_parameters())
        for ps, keep in zip(self.params, self.keep):
            for name, t in ps:
                other = found.get(name)
                if other is None or other.shape != t.shape:
                    raise ValueError(f'ChannelDNS.apply_to: model has no parameter {name} of shape {tuple(t.shape)}')
                other[(~keep).to(other.device)] = 0

    # ---- reports (masks, masks_by_name keyed by the group's first producer e.g. 'model.2.cv1.conv', sparsity as
    # the fraction of prunable channels masked, summary, reset_counters: SurgeryBase)

    def _model_sparsity(self, model: nn.Module) -> float:
        r = zero_channel_fraction(model)
        LOGGER.info(f'{colorstr("sparsity: ")}{r:.1%} of prunable channels off; {channel_flops_line(model)}')
        return r

    def finish_file(self, f: Path) -> str:
        """Masked channels output 0: remove them from the saved model, a physically smaller one."""
        return f'{Path(f).name}: {shrink_checkpoint(f)}'

    def layer_table(self) -> str:
        """Per-group table: first producer, channels, masked fraction, pruned/spliced since reset_counters()."""
        rows = [f"{'channel group (first producer)':<40}{'channels':>10}{'masked':>10}{'pruned':>10}{'spliced':>10}"]
        for name, keep, p, s in zip(self.names, self.keep, self._pruned_count, self._spliced_count):
            rows.append(f'{name:<40}{keep.numel():>10}{1 - keep.float().mean().item():>10.1%}{int(p):>10}{int(s):>10}')
        rows.append(self._total_row(10))
        return '\n'.join(rows)

    # ---- checkpoints (--resume)

    def state_dict(self) -> dict:
        """CPU state: keep-masks by group, dense values of the managed parameters (during surgery), step, config, RNG."""
        dense = {} if self.frozen else {name: d.cpu().clone() for ps, ds in zip(self.params, self.dense)
                                        for (name, _), d in zip(ps, ds)}
        return {'granularity': 'channel', 'masks': self._masks_state(), 'dense': dense, **self._progress_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the model's masked channels are re-zeroed."""
        if state.get('granularity') != 'channel':
            raise ValueError('the checkpoint holds weight-level DNS state; resume it without --dns-granularity channel')
        masks = state['masks']
        if list(masks) != self.names or any(masks[n].numel() != k.numel() for n, k in zip(self.names, self.keep)):
            raise ValueError(f'channel DNS state holds {len(masks)} channel groups that do not match this model '
                             f'({len(self.names)} groups)')
        self._load_progress(state)
        self.keep = [masks[n].bool().cpu().clone() for n in self.names]
        self._count_masked()
        self.dense = [] if self.frozen else [[state['dense'][name].to(t.device, t.dtype, copy=True) for name, t in ps]
                                            for ps in self.params]  # copies: later steps must not write into `state`
        self._zero_masked()
        self.reset_counters()


def channel_flops_line(model: nn.Module, imgsz: int = 640) -> str:
    """'GFLOPs 4.1 -> 2.0 at 640 px once the masked channels are removed' for a model with zeroed channels."""
    m = deepcopy(de_parallel(model)).float()
    before = model_flops(m, imgsz)
    shrink_zero_channels(m)
    after = model_flops(m, imgsz)
    return f'GFLOPs {before:.2f} -> {after:.2f} at {imgsz} px ({after / before if before else math.nan:.2f}x)'
