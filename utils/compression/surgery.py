"""The surgery base shared by weight DNS and channel DNS: schedule, mask-update draw, hysteresis ranking,
settings, counters and the optimizer-step protocol (`SurgeryBase`). The algorithms live in
weight/dns.py (masks on single weights) and channel/dns.py (masks on whole output channels).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.compression.hooks import TrainingHook
from utils.compression.layers import SCOPES, distributed
from utils.general import LOGGER, colorstr


def cubic_schedule(k: int, n: int, s_final: float, s_init: float = 0.0) -> float:
    """Scheduled sparsity (fraction) after k of n surgery steps: s_final + (s_init - s_final) * (1 - k/n)^3.

    Zhu & Gupta 2017: fast pruning early, slow near the target. k is clamped to [0, n]; n <= 0 gives s_final.
    """
    if n <= 0:
        return s_final
    progress = min(max(k / n, 0.0), 1.0)
    return s_final + (s_init - s_final) * (1.0 - progress) ** 3


def update_probability(k: int, gamma: float, power: float) -> float:
    """σ(k) = (1 + γ·k)^(-power): probability that the masks are updated at optimizer step k."""
    return (1.0 + gamma * k) ** (-power)


def hysteresis_scores(w: Tensor, keep: Tensor, band: float) -> Tensor:
    """float32 scores |w|/(1-δ) where kept, |w|/(1+δ) where masked: the hysteresis rule as one ranking.

    For any q, `scores >= q` equals `mask_rule(w, (1-δ)q, (1+δ)q, keep)`: a kept weight stays iff |w| >= (1-δ)q,
    a masked one returns iff |w| >= (1+δ)q. Pruning the lowest fraction s of the scores therefore applies the
    hysteresis rule with the one q that makes the sparsity exactly s (a q taken from |w| alone would leave the
    sparsity lagging behind s by the weights inside the band).
    """
    return w.detach().abs().float().mul_(torch.where(keep, 1.0 / (1.0 - band), 1.0 / (1.0 + band)))


@dataclass
class DNSConfig:
    """DNS settings; validated on creation (one-line ValueError). Stored in `DNS.state_dict()` for --resume."""

    target: float  # final sparsity: fraction of the managed weights that are zero, 0 < target < 1
    surgery_steps: int  # optimizer steps of the surgery phase; masks are frozen afterwards
    scope: str = 'layer'  # 'layer': each tensor reaches target; 'global': all managed weights together
    band: float = 0.1  # δ: hysteresis half-width relative to q; a = (1-δ)q, b = (1+δ)q
    gamma: float = 1e-4  # σ(k) = (1 + gamma*k)^(-power)
    power: float = 1.0
    s_init: float = 0.0  # scheduled sparsity at step 0 (fraction); = target: constant schedule (train.py default)
    seed: int = 0  # seed of the update-decision generator; same on every rank
    exclude_first: bool = False  # keep the first conv dense
    exclude_detect: bool = False  # keep the Detect output convs dense
    sync_masks: bool = False  # broadcast masks from rank 0 after every update (DDP)

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f'DNS target sparsity must be in (0, 1), got {self.target}')
        if not (isinstance(self.surgery_steps, int) and self.surgery_steps >= 1):
            raise ValueError(f'DNS surgery_steps must be an integer >= 1, got {self.surgery_steps!r}')
        if self.scope not in SCOPES:
            raise ValueError(f"DNS scope must be 'layer' or 'global', got {self.scope!r}")
        if not 0.0 <= self.band < 1.0:
            raise ValueError(f'DNS band δ must be in [0, 1), got {self.band}')
        if not self.gamma >= 0.0:
            raise ValueError(f'DNS gamma must be >= 0, got {self.gamma}')
        if not self.power > 0.0:
            raise ValueError(f'DNS power must be > 0, got {self.power}')
        if not 0.0 <= self.s_init <= self.target:
            raise ValueError(f'DNS initial sparsity must be in [0, target={self.target}], got {self.s_init}')


class SurgeryBase(TrainingHook, ABC):
    """What weight-level `DNS` and channel-level DNS (utils/compression/channel/dns.py) share: the step protocol,
    config, step counter, update decisions, schedule, mask bookkeeping and reports.

    A mask unit is one entry of a bool keep-mask in `keep` (True = kept): a weight (DNS) or a channel of a channel
    group (ChannelDNS). Subclasses own the managed parameters and their dense values and implement the abstract hooks.
    """

    config_class: type[DNSConfig] = DNSConfig  # what load_state_dict rebuilds the saved config as
    key = 'dns'  # checkpoint key of state_dict()
    surgery_epochs: int | None = None  # train.py: end_epoch() finishes the surgery after this many epochs

    def __init__(self, cfg: DNSConfig, names: list[str], keep: list[Tensor], *, s_init_from_masks: bool) -> None:
        """Start at step 0 with bool keep-masks `keep` (one per name); s_init_from_masks: s_init <- their sparsity."""
        self.cfg = cfg
        self.names = names
        self.keep = keep
        self._numel = sum(k.numel() for k in keep)  # mask units in all
        self._count_masked()
        self.step = 0  # optimizer steps taken
        self.frozen = False  # True after the final cut: masks fixed
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._in_step = False  # True between before_step() and after_step(): parameters hold dense values
        self.reset_counters()
        self._reported: dict[str, float | int] = {}  # summary() at the last epoch_columns call
        if s_init_from_masks:
            self.cfg = replace(self.cfg, s_init=min(self.sparsity, cfg.target))

    # ---- the two hooks around optimizer.step(), and the early end

    @torch.no_grad()
    def before_step(self) -> None:
        """Give the masked entries their dense values back so the optimizer updates them too.

        Call once per optimizer step, after the last backward (and after scaler.unscale_/clipping).
        """
        if not self.frozen:
            self._restore_dense()
        self._in_step = True

    @torch.no_grad()
    def after_step(self) -> None:
        """Count the step; during surgery maybe update the masks (probability σ(k)); zero the masked entries.

        At step `surgery_steps` the exact final cut is made and the masks are frozen.
        """
        if not self._in_step:
            raise RuntimeError(f'{type(self).__name__}.after_step() without before_step(): '
                               'call before_step() before optimizer.step()')
        self.step += 1
        if not self.frozen:
            if self._draw_update():
                self._update_masks(self.scheduled_sparsity)
            if self.step >= self.cfg.surgery_steps:
                self._final_cut()
        self._mask_parameters()
        self._in_step = False

    @torch.no_grad()
    def finish(self) -> None:
        """End the surgery now (e.g. training stops early): exact cut to the target from the dense values, masks
        frozen, masked entries zeroed."""
        if self.frozen:
            return
        if self._in_step:
            raise RuntimeError(f'{type(self).__name__}.finish() inside an optimizer step: call it after after_step()')
        self._write_dense()
        self._final_cut()
        self._zero_masked()

    # ---- the rest of the training-hook protocol (utils/compression/hooks.py)

    def end_epoch(self, epoch: int) -> None:
        """Finish the surgery (exact cut, masks frozen) once ``surgery_epochs`` epochs are done."""
        if self.surgery_epochs is not None and epoch + 1 >= self.surgery_epochs:
            self.finish()

    def progress(self) -> dict[str, float]:
        return {'sparsity': self.sparsity}

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        """results.csv: the evaluated model's sparsity, and the units pruned/spliced since the previous call."""
        r = self._model_sparsity(model)
        s = self.summary()
        seen = self._reported
        pruned, spliced = s['pruned'] - seen.get('pruned', 0), s['spliced'] - seen.get('spliced', 0)
        self._reported = s
        phase = 'masks frozen' if self.frozen else (f'surgery step {self.step}/{self.cfg.surgery_steps}, '
                                                    f'scheduled {self.scheduled_sparsity:.1%}')
        LOGGER.info(f"{colorstr('DNS: ')}masks {s['sparsity']:.1%} sparse ({phase}); "
                    f'{pruned} pruned, {spliced} spliced this epoch')
        return {'sparsity': float(r), 'dns/pruned': pruned, 'dns/spliced': spliced}

    @abstractmethod
    def _model_sparsity(self, model: nn.Module) -> float:
        """The evaluated model's sparsity in this method's units (logged); read by epoch_columns."""

    def final_report(self) -> str:
        text = (f"{colorstr('DNS: ')}masks per layer; pruned/spliced counted since this run started\n"
                f'{self.layer_table()}')
        if not self.frozen:
            text += (f'\nWARNING ⚠️ training stopped before the end of the DNS surgery phase (--dns-surgery-epochs '
                     f'{self.surgery_epochs}): the saved masks are {self.sparsity:.1%} sparse, not the target '
                     f'{self.cfg.target:.1%}')
        return text

    # ---- surgery

    @property
    def scheduled_sparsity(self) -> float:
        """s_k: the fraction of mask units the schedule asks to be masked at the current step."""
        return cubic_schedule(self.step, self.cfg.surgery_steps, self.cfg.target, self.cfg.s_init)

    def _draw_update(self) -> bool:
        """One uniform draw per surgery step (keeps all ranks' generators in lock-step); rank 0's draw decides."""
        u = torch.rand(1, generator=self.generator)
        if distributed():
            u = u.to(self._device())
            dist.broadcast(u, src=0)
        return float(u) < update_probability(self.step, self.cfg.gamma, self.cfg.power)

    def _replace_mask(self, i: int, new: Tensor) -> None:
        """keep[i] <- new (bool), counting the units it prunes (kept -> masked) and splices (masked -> kept).

        Call `_count_masked` once all masks are replaced.
        """
        old = self.keep[i]
        self._pruned_count[i] += torch.count_nonzero(old > new)
        self._spliced_count[i] += torch.count_nonzero(new > old)
        self.keep[i] = new

    def _count_masked(self) -> None:
        """Recount the masked units per mask (read by `sparsity`, e.g. every iteration for the progress bar)."""
        self._masked_count = [keep.numel() - torch.count_nonzero(keep) for keep in self.keep]

    @abstractmethod
    def _device(self) -> torch.device:
        """The managed parameters' device (collective operations run there)."""

    @abstractmethod
    def _restore_dense(self) -> None:
        """before_step during surgery: the masked entries of the managed parameters <- their dense values."""

    @abstractmethod
    def _mask_parameters(self) -> None:
        """after_step: during surgery keep the parameters' values as the dense ones; then zero the masked entries."""

    @abstractmethod
    def _write_dense(self) -> None:
        """finish: the managed parameters <- their dense values, before the final cut."""

    @abstractmethod
    def _update_masks(self, amount: float) -> None:
        """Hysteresis update of the masks to the fraction `amount` of masked units."""

    @abstractmethod
    def _final_cut(self) -> None:
        """Masks to exactly the target, then frozen; the dense values are dropped."""

    @abstractmethod
    def _zero_masked(self) -> None:
        """Zero the masked entries of the managed parameters outside the step hooks (finish, load_state_dict)."""

    # ---- reports

    def masks(self) -> list[Tensor]:
        """Bool keep-masks (True = kept), in `names` order (read-only)."""
        return list(self.keep)

    def masks_by_name(self) -> dict[str, Tensor]:
        """Bool keep-masks (True = kept) keyed by name (see the subclass's `names`)."""
        return dict(zip(self.names, self.masks()))

    @property
    def sparsity(self) -> float:
        """Fraction of masked units over all managed ones (counted when the masks change)."""
        return int(torch.stack(self._masked_count).sum()) / self._numel

    def reset_counters(self) -> None:
        """Start a new report period for the pruned/spliced counters."""
        self._pruned_count = [torch.zeros((), dtype=torch.long, device=keep.device) for keep in self.keep]
        self._spliced_count = [torch.zeros((), dtype=torch.long, device=keep.device) for keep in self.keep]

    def summary(self) -> dict[str, float | int]:
        """For results.csv: sparsity (fraction), pruned and spliced unit counts since the last reset_counters()."""
        return {'sparsity': self.sparsity,
                'pruned': sum(int(c) for c in self._pruned_count),
                'spliced': sum(int(c) for c in self._spliced_count)}

    def _total_row(self, width: int) -> str:
        """The last layer_table row: phase, unit count (right-aligned in `width` characters), sparsity, counters."""
        total = self.summary()
        phase = 'frozen' if self.frozen else f'surgery {self.step}/{self.cfg.surgery_steps}'
        return (f"{'total (' + phase + ')':<40}{self._numel:>{width}}{total['sparsity']:>10.1%}"
                f"{total['pruned']:>10}{total['spliced']:>10}")

    # ---- checkpoints (--resume)

    def _masks_state(self) -> dict[str, Tensor]:
        """CPU copies of the keep-masks by name, for state_dict()."""
        return {name: keep.to('cpu', copy=True) for name, keep in self.masks_by_name().items()}

    def _progress_state(self) -> dict:
        """The state_dict() entries after the masks and values: step, frozen, config, RNG state."""
        return {'step': self.step, 'frozen': self.frozen, 'config': asdict(self.cfg), 'rng': self.generator.get_state()}

    def _load_progress(self, state: dict) -> None:
        """Restore what `_progress_state` saved (the saved config replaces this one's); leaves the step hooks idle."""
        self.cfg = self.config_class(**state['config'])
        self.step, self.frozen, self._in_step = int(state['step']), bool(state['frozen']), False
        self.generator.set_state(state['rng'])


