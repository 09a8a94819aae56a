"""Channel-level Dynamic Network Surgery: DNS whose masks switch whole output channels off and on.

The weight-level DNS of utils/compression/weight/dns.py masks single weights; here a mask entry is one channel of a
channel group (utils/compression/channel/groups.py: a conv's outputs, tied across residual adds).

Straight-through masks, the channel analogue of DNS's W ⊙ T: during the surgery the parameters keep their dense
values and each producer's output (after its activation) is multiplied by the channel mask in the forward pass,
while the backward pass treats the mask as 1. A masked channel therefore outputs 0 (its readers see the smaller
model), yet its filters and BatchNorm receive the gradient they would get if it were on (dL/dy of the masked output,
which its readers' input slices make non-zero), so its importance keeps moving and the hysteresis rule can splice
it back. The masks live in one global forward hook keyed weakly by module (`_StraightThrough`), so nothing is
stored on the model and checkpoints stay plain YOLOv5 pickles; the EMA copy gets the masked channels' BN scale and
shift zeroed instead (`apply_to`), and a channel spliced back is copied into it from the training model.

At the final cut the masks are frozen, the hook is removed and the masked channels' BN scale and shift (conv rows
and bias without BN) become 0: the model then outputs exactly what the physically smaller model outputs
(SiLU(0) = 0) and is fine-tuned with those zeros held after every step; `shrink_zero_channels` removes them.

Masks follow the same hysteresis rule and schedule as DNS (`hysteresis_scores` on per-channel scores, exact count
per update through `utils.compression.channel.pruning.select_channels`), with σ(k) update decisions drawn identically
on every rank; under torch.distributed the masks are also broadcast from rank 0 after every update, so all ranks
always hold identical channel masks. The step protocol, schedule, update draws and reports are
utils.compression.surgery.SurgeryBase's, shared with DNS (before_step / after_step / finish / apply_to /
state_dict), so train.py drives both the same way; train.py shrinks best.pt and last.pt when training ends
(`finish_file`).
"""

from __future__ import annotations

import math
import weakref
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from models.common import Conv
from utils.compression.channel.groups import ChannelGroup, Producer, channel_groups
from utils.compression.channel.pruning import (DEFAULT_IMPORTANCE, IMPORTANCES, channel_importance, select_channels,
                                               shrink_checkpoint, shrink_zero_channels, zero_channel_fraction,
                                               zero_channel_masks)
from utils.compression.layers import de_parallel, distributed
from utils.compression.surgery import DNSConfig, SurgeryBase, hysteresis_scores
from utils.general import LOGGER, colorstr
from utils.torch_utils import model_flops

# the weight-based importances of one-shot pruning, plus 'taylor': the running mean over optimizer steps of
# (sum over the step's images and positions of y * dL/dy)^2 per channel, summed over the group's producers -- the
# squared first-order change of the loss when the channel is switched off (kept) or on (masked; y is the output it
# would have, dL/dy the gradient at its zero output) (Molchanov et al., CVPR 2019)
DNS_IMPORTANCES = (*IMPORTANCES, 'taylor')


@dataclass
class ChannelDNSConfig(DNSConfig):
    """DNSConfig where target is the fraction of prunable channels; plus the channel importance and rounding."""

    importance: str = 'bn'  # one of DNS_IMPORTANCES (see there)
    round_to: int = 1  # kept channels per group rounded up to a multiple of this
    taylor_decay: float = 0.9  # 'taylor': running mean over optimizer steps, weight of the past

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.importance not in DNS_IMPORTANCES:
            raise ValueError(f"channel importance must be one of {', '.join(DNS_IMPORTANCES)}, "
                             f'got {self.importance!r}')
        if not 0.0 <= self.taylor_decay < 1.0:
            raise ValueError(f'taylor_decay must be in [0, 1), got {self.taylor_decay}')
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


def _output_module(model: nn.Module, p: Producer) -> nn.Module:
    """The module whose output is the producer's channels: its Conv block (after the activation) when the conv and
    BN sit in a models.common.Conv, else the BN, else the conv."""
    parent = model.get_submodule(p.name.rpartition('.')[0]) if '.' in p.name else None
    if isinstance(parent, Conv) and parent.conv is p.conv and getattr(parent, 'bn', None) is p.bn:
        return parent
    return p.bn if p.bn is not None else p.conv


@dataclass(eq=False)
class _Gate:
    """One producer's output channels during the surgery."""

    keep: Tensor | None = None  # float (channels,) on the module's device; None: no channel masked
    off: Tensor | None = None  # indices of the masked channels
    taylor: Tensor | None = None  # float32 (channels,): sum over backward passes of sum(y * dL/dy); None: not recorded


class _StraightThrough:
    """Channel masks on module outputs through one global forward hook.

    Forward: y * keep, so the rest of the model computes (and is trained on) the masked network. In training, the
    masked channels are recomputed from a detached input and added as z - z.detach() (value 0): their own filters
    and BN get dL/dy as if they were on, while no gradient flows through them into earlier layers. A gate with a
    `taylor` accumulator also adds sum(y * dL/dy) per channel in every backward pass (y: the output before the mask,
    dL/dy: the gradient at the masked output). Modules are held weakly, so a model that is dropped takes its gates
    with it; `remove()` detaches the hook.
    """

    def __init__(self) -> None:
        self.gates: weakref.WeakKeyDictionary[nn.Module, _Gate] = weakref.WeakKeyDictionary()
        self.handle = nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        gate = self.gates.get(module)
        if gate is None:
            return None
        train = module.training and torch.is_grad_enabled()
        y = out
        if gate.keep is not None:
            y = out * gate.keep.to(out.dtype).view(1, -1, 1, 1)
            if train:
                z = _channels_output(module, args[0].detach(), gate.off)
                y = y.index_add(1, gate.off, (z - z.detach()).to(y.dtype))
        if train and gate.taylor is not None and y.requires_grad:
            y.register_hook(_taylor_hook(out.detach(), gate.taylor))
        return None if y is out else y

    def set(self, module: nn.Module, keep: Tensor, taylor: bool = False) -> _Gate | None:
        """Gate ``module``'s output channels with bool ``keep``; taylor: record first-order scores. Returns the gate
        (None when nothing is masked or recorded)."""
        device = next(module.parameters()).device
        gate = self.gates.get(module) or _Gate()
        if bool(keep.all()):
            gate.keep = gate.off = None
        else:
            gate.keep, gate.off = keep.to(device, torch.float32), torch.nonzero(~keep).flatten().to(device)
        if taylor and gate.taylor is None:
            gate.taylor = torch.zeros(keep.numel(), device=device)
        if gate.keep is None and gate.taylor is None:
            self.gates.pop(module, None)
            return None
        self.gates[module] = gate
        return gate

    def remove(self) -> None:
        self.handle.remove()
        self.gates.clear()


def _taylor_hook(value: Tensor, acc: Tensor):
    """Tensor hook: acc += sum over batch and positions of value * grad (per channel), in float32 (under AMP the
    FP16 products of GradScaler-scaled gradients would overflow)."""
    def hook(grad: Tensor) -> None:
        acc.add_((value.float() * grad.float()).sum((0, 2, 3)))
    return hook


def _channels_output(module: nn.Module, x: Tensor, idx: Tensor) -> Tensor:
    """Output channels ``idx`` of a Conv block, BN or conv (groups=1, training mode: BN batch statistics, no
    running-statistics update: the full forward made it)."""
    if isinstance(module, nn.BatchNorm2d):
        return _bn_channels(module, x[:, idx], idx)
    conv = module.conv if isinstance(module, Conv) else module
    bias = None if conv.bias is None else conv.bias[idx]
    z = F.conv2d(x, conv.weight[idx], bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if isinstance(module, Conv):
        return module.act(_bn_channels(module.bn, z, idx))
    return z


def _bn_channels(bn: nn.BatchNorm2d, z: Tensor, idx: Tensor) -> Tensor:
    return F.batch_norm(z, None, None, bn.weight[idx], bn.bias[idx], training=True, eps=bn.eps)


class ChannelDNS(SurgeryBase):
    """Dynamic Network Surgery over the prunable channel groups of a YOLOv5 model (see the module docstring).

    Args as utils.compression.weight.dns.DNS (target = fraction of prunable channels), plus importance (one of
    DNS_IMPORTANCES) and round_to. Construct after the model is on its device. Initial masks keep every channel that
    is not already off. The step hooks, schedule, update draws, counters and reports are SurgeryBase's
    (utils/compression/surgery.py).
    """

    config_class = ChannelDNSConfig

    def __init__(self, model: nn.Module, target: float, surgery_steps: int, *, scope: str = 'layer',
                 band: float = 0.1, gamma: float = 1e-4, power: float = 1.0, s_init: float | None = 0.0,
                 seed: int = 0, importance: str = 'bn', round_to: int = 1, exclude_first: bool = False,
                 exclude_detect: bool = False, sync_masks: bool = True, taylor_decay: float = 0.9) -> None:
        cfg = ChannelDNSConfig(target=target, surgery_steps=surgery_steps, scope=scope, band=band, gamma=gamma,
                               power=power, s_init=0.0 if s_init is None else s_init, seed=seed,
                               exclude_first=exclude_first, exclude_detect=exclude_detect,
                               sync_masks=sync_masks, importance=importance, round_to=round_to,
                               taylor_decay=taylor_decay)
        model = de_parallel(model)
        groups = channel_groups(model)
        if exclude_first:  # the group of the first conv keeps its channels
            groups = [g for g in groups if not any(p.name.startswith('model.0.') for p in g.producers)]
        self.groups = [g for g in groups if not g.frozen]
        if not self.groups:
            raise ValueError('channel DNS found no prunable channel groups in the model')
        self.params = [_managed(model, g) for g in self.groups]
        self.outputs = [[_output_module(model, p) for p in g.producers] for g in self.groups]
        self._ste: _StraightThrough | None = None  # the forward masks while the surgery runs
        self._gates: list[list[_Gate]] = []  # per group, per producer (while the surgery runs)
        self.taylor = [torch.zeros(g.channels) for g in self.groups] if importance == 'taylor' else None
        self.taylor_steps = 0  # optimizer steps folded into self.taylor
        self._ema_keep: list[Tensor] | None = None  # masks when the EMA copy was last masked (apply_to)
        # channels already off stay off at first
        super().__init__(cfg, [g.name for g in self.groups], zero_channel_masks(self.groups),
                         s_init_from_masks=s_init is None)
        self.ever_off = [~k for k in self.keep]  # per group: channels masked at some point of this run
        self._start_straight_through()

    # ---- step hooks (SurgeryBase.before_step / after_step / finish call these)

    def _device(self) -> torch.device:
        return self.params[0][0][1].device

    def _start_straight_through(self) -> None:
        """Surgery: masks act on the forward pass (parameters keep their dense values)."""
        if self._ste is None:
            self._ste = _StraightThrough()
        taylor = self.taylor is not None
        self._gates = [[self._ste.set(m, keep, taylor) for m in modules]
                       for modules, keep in zip(self.outputs, self.keep)]

    def _stop_straight_through(self) -> None:
        if self._ste is not None:
            self._ste.remove()
            self._ste = None
            self._gates = []

    @torch.no_grad()
    def before_step(self) -> None:
        """'taylor': fold this step's first-order terms into the running scores, then SurgeryBase.before_step."""
        if self.taylor is not None and self._gates:
            d = self.cfg.taylor_decay
            for i, gates in enumerate(self._gates):
                step = sum(g.taylor.cpu() for g in gates)
                self.taylor[i].mul_(d).add_(step.square(), alpha=1.0 - d)
                for g in gates:
                    g.taylor.zero_()
            self.taylor_steps += 1
        super().before_step()

    def __del__(self) -> None:
        if getattr(self, '_ste', None) is not None:  # (not set when __init__ raised)
            self._stop_straight_through()

    def _restore_dense(self) -> None:
        """Nothing to do: during surgery the parameters hold their dense values (the masks act on the outputs)."""

    def _mask_parameters(self) -> None:
        """After the final cut the masked channels' parameters are held at 0 after every step."""
        if self.frozen:
            self._zero_masked()

    def _write_dense(self) -> None:
        """Nothing to do: the parameters already hold the dense values."""

    def _zero_masked(self) -> None:
        for ps, keep in zip(self.params, self.keep):
            off = ~keep
            if bool(off.any()):
                for _, t in ps:
                    t[off.to(t.device)] = 0

    # ---- surgery

    def _update_masks(self, amount: float) -> None:
        """Hysteresis update: scores |s|/(1-δ) kept, |s|/(1+δ) masked, the lowest ``amount`` of them go."""
        if self.taylor is not None and self.taylor_steps:
            raw = self.taylor
        else:  # 'taylor' before any gradient was seen (e.g. --dns-surgery-epochs 0): the default weight-based ranking
            kind = DEFAULT_IMPORTANCE if self.taylor is not None else self.cfg.importance
            raw = [channel_importance(g, kind) for g in self.groups]
        scores = [hysteresis_scores(r, keep, self.cfg.band) for r, keep in zip(raw, self.keep)]
        self._set_masks(select_channels(self.groups, scores, amount, self.cfg.scope, self.cfg.round_to))

    def _final_cut(self) -> None:
        """Masks to exactly the target and frozen; the forward masks become zeroed BN scale and shift."""
        self._update_masks(self.cfg.target)
        self.frozen = True
        self._stop_straight_through()
        self._zero_masked()

    def _set_masks(self, keep: list[Tensor]) -> None:
        if self.cfg.sync_masks and distributed():
            flat = torch.cat(keep).to(device=self._device(), dtype=torch.uint8)
            dist.broadcast(flat, src=0)
            keep = list(flat.bool().cpu().split([k.numel() for k in keep]))
        for i, new in enumerate(keep):
            self._replace_mask(i, new.clone())
            self.ever_off[i] |= ~self.keep[i]
        self._count_masked()
        if not self.frozen:
            self._start_straight_through()

    # ---- other models (EMA)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Zero the masked channels of a model with the same parameter names and shapes (the EMA copy).

        A channel spliced back since the previous call gets the training model's values: the EMA copy held it at 0.
        """
        found = dict(de_parallel(model).named_parameters())
        previous = self._ema_keep or [None] * len(self.keep)
        for ps, keep, before in zip(self.params, self.keep, previous):
            back = None if before is None else keep & ~before
            for name, t in ps:
                other = found.get(name)
                if other is None or other.shape != t.shape:
                    raise ValueError(f'ChannelDNS.apply_to: model has no parameter {name} of shape {tuple(t.shape)}')
                other[(~keep).to(other.device)] = 0
                if back is not None and bool(back.any()):
                    b = back.to(other.device)
                    other[b] = t.detach()[back.to(t.device)].to(other.dtype)
        self._ema_keep = [k.clone() for k in self.keep]

    # ---- reports (masks, masks_by_name keyed by the group's first producer e.g. 'model.2.cv1.conv', sparsity as
    # the fraction of prunable channels masked, summary, reset_counters: SurgeryBase)

    def _model_sparsity(self, model: nn.Module) -> float:
        r = zero_channel_fraction(model)
        LOGGER.info(f'{colorstr("sparsity: ")}{r:.1%} of prunable channels off; {channel_flops_line(model)}')
        return r

    def finish_file(self, f: Path) -> str:
        """Masked channels output 0: remove them from the saved model, a physically smaller one."""
        return f'{Path(f).name}: {shrink_checkpoint(f)}'

    def returned(self) -> int:
        """Channels that were masked at some point of this run and are kept now (spliced back and stayed)."""
        return sum(int((k & off).sum()) for k, off in zip(self.keep, self.ever_off))

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        """SurgeryBase's columns plus dns/returned: kept channels that were masked at some point (see `returned`)."""
        return {**super().epoch_columns(model), 'dns/returned': self.returned()}

    def layer_table(self) -> str:
        """Per-group table: first producer, channels, masked fraction, pruned/spliced since reset_counters(), and
        the kept channels that were masked at some point."""
        rows = [f"{'channel group (first producer)':<40}{'channels':>10}{'masked':>10}{'pruned':>10}{'spliced':>10}"
                f"{'returned':>10}"]
        for name, keep, p, s, off in zip(self.names, self.keep, self._pruned_count, self._spliced_count,
                                         self.ever_off):
            rows.append(f'{name:<40}{keep.numel():>10}{1 - keep.float().mean().item():>10.1%}{int(p):>10}{int(s):>10}'
                        f'{int((keep & off).sum()):>10}')
        rows.append(self._total_row(10) + f'{self.returned():>10}')
        return '\n'.join(rows)

    # ---- checkpoints (--resume)

    def state_dict(self) -> dict:
        """CPU state: keep-masks by group, the managed parameters' dense values (during surgery), Taylor scores,
        step, config, RNG."""
        dense = {} if self.frozen else {name: t.detach().cpu().clone() for ps in self.params for name, t in ps}
        taylor = {} if self.taylor is None else {'taylor': [t.clone() for t in self.taylor],
                                                 'taylor_steps': self.taylor_steps}
        ever_off = {n: off.clone() for n, off in zip(self.names, self.ever_off)}
        return {'granularity': 'channel', 'masks': self._masks_state(), 'dense': dense, 'ever_off': ever_off, **taylor,
                **self._progress_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`: masks, progress and (during surgery) the dense values of the managed parameters."""
        if state.get('granularity') != 'channel':
            raise ValueError('the checkpoint holds weight-level DNS state; resume it without --dns-granularity channel')
        masks = state['masks']
        if list(masks) != self.names or any(masks[n].numel() != k.numel() for n, k in zip(self.names, self.keep)):
            raise ValueError(f'channel DNS state holds {len(masks)} channel groups that do not match this model '
                             f'({len(self.names)} groups)')
        self._load_progress(state)
        self.keep = [masks[n].bool().cpu().clone() for n in self.names]
        ever_off = state.get('ever_off') or {}  # (not in states written before it existed)
        self.ever_off = [ever_off[n].bool().cpu().clone() if n in ever_off else ~k
                         for n, k in zip(self.names, self.keep)]
        self._count_masked()
        if self.frozen:
            self._stop_straight_through()
            self._zero_masked()
        else:  # the model was loaded from the EMA copy, whose masked channels are 0: the dense values come back
            for ps in self.params:
                for name, t in ps:
                    t.copy_(state['dense'][name])
            self._start_straight_through()
        if self.taylor is not None and 'taylor' in state:
            self.taylor = [t.clone().float().cpu() for t in state['taylor']]
            self.taylor_steps = int(state['taylor_steps'])
        self._ema_keep = None
        self.reset_counters()


def channel_flops_line(model: nn.Module, imgsz: int = 640) -> str:
    """'GFLOPs 4.1 -> 2.0 at 640 px once the masked channels are removed' for a model with zeroed channels."""
    m = deepcopy(de_parallel(model)).float()
    before = model_flops(m, imgsz)
    shrink_zero_channels(m)
    after = model_flops(m, imgsz)
    return f'GFLOPs {before:.2f} -> {after:.2f} at {imgsz} px ({after / before if before else math.nan:.2f}x)'
