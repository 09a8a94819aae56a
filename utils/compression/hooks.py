"""The one protocol through which a compression method takes part in train.py's loop.

DNS, channel DNS, network slimming, weight sharing and the plain sparsity report each implement the hook points
they need; every other point is a no-op. train.py holds one `TrainingHooks` (the methods of a run, in a fixed
order) and calls each point once, at these places of YOLOv5's loop:

    scaler.scale(loss).backward()
    if ni - last_opt_step >= accumulate:                 # one optimizer step
        scaler.unscale_(optimizer)                       # true gradients from here on (AMP)
        hooks.on_gradients()                             # before clipping: weight sharing sums each cluster's grads
        clip_grad_norm_(model.parameters(), 10.0)
        hooks.before_step()                              # after clipping: slimming's L1 penalty gradient
                                                         #   (so clipping never scales it), DNS: dense W back
        scaler.step(optimizer); scaler.update(); optimizer.zero_grad()
        hooks.after_step()                               # DNS: maybe update masks, W <- W*T; sharing: codebooks
        ema.update(model)
    # end of each epoch
    hooks.end_epoch(epoch)                               # DNS: end of the surgery phase -> exact cut, masks frozen
    hooks.apply_to(ema.ema)                              # the EMA copy is what is evaluated and saved
    extra = hooks.epoch_columns(ema.ema)                 # trailing results.csv columns (logged as well)
    save(..., **hooks.state_dict())                      # checkpoint keys for --resume ('dns', 'share')
    # after training
    hooks.finish_file(last / best)                       # channel DNS: physically remove the masked channels
    hooks.final_report()                                 # per-layer tables

The order around clipping is the contract: gradients are unscaled before anything reads them, weight sharing
sums gradients before the clip (the clip then sees the step that is really taken), and penalties are added after
it. A step skipped by AMP's GradScaler still counts as a step for every hook.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn


class TrainingHook:
    """Base class of a method in the training loop: override the hook points the method needs (see module doc).

    ``key``: the checkpoint key under which ``state_dict()`` is saved and restored on --resume (None: no state).
    """

    key: str | None = None

    def on_gradients(self) -> None:
        """Unscaled gradients of one optimizer step, before gradient clipping."""

    def before_step(self) -> None:
        """After clipping, right before optimizer.step()."""

    def after_step(self) -> None:
        """Right after optimizer.step() (and zero_grad), before the EMA update."""

    def end_epoch(self, epoch: int) -> None:
        """After the last optimizer step of epoch ``epoch`` (0-based), before the EMA copy is evaluated."""

    def apply_to(self, model: nn.Module) -> None:
        """Make ``model`` (the EMA copy) obey the method's constraints (masks, codebooks) before it is evaluated."""

    def progress(self) -> dict[str, float]:
        """Extra progress-bar columns (name -> value), read every iteration: keep it cheap."""
        return {}

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        """Trailing results.csv columns for the evaluated ``model`` at the end of an epoch (also logged)."""
        return {}

    def state_dict(self) -> dict:
        """What --resume needs (saved under ``key``)."""
        return {}

    def finish_file(self, f: Path) -> str | None:
        """Post-process a finished (optimizer-stripped) checkpoint file; returns a log line or None."""
        return None

    def final_report(self) -> str | None:
        """Text logged after training (e.g. a per-layer table), or None."""
        return None


class TrainingHooks(TrainingHook):
    """The methods of one run, called in list order at every hook point; an empty list is a plain YOLOv5 run."""

    def __init__(self, hooks: Iterable[TrainingHook] = ()) -> None:
        self.hooks = list(hooks)

    def __iter__(self):
        return iter(self.hooks)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def on_gradients(self) -> None:
        for h in self.hooks:
            h.on_gradients()

    def before_step(self) -> None:
        for h in self.hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self.hooks:
            h.after_step()

    def end_epoch(self, epoch: int) -> None:
        for h in self.hooks:
            h.end_epoch(epoch)

    def apply_to(self, model: nn.Module) -> None:
        for h in self.hooks:
            h.apply_to(model)

    def progress(self) -> dict[str, float]:
        return {k: v for h in self.hooks for k, v in h.progress().items()}

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        return {k: v for h in self.hooks for k, v in h.epoch_columns(model).items()}

    def state_dict(self) -> dict:
        """Checkpoint keys of every hook that has state: {hook.key: hook.state_dict()}."""
        return {h.key: h.state_dict() for h in self.hooks if h.key}

    def finish_file(self, f: Path) -> str | None:
        lines = [line for h in self.hooks if (line := h.finish_file(f))]
        return '\n'.join(lines) or None

    def final_report(self) -> str | None:
        lines = [line for h in self.hooks if (line := h.final_report())]
        return '\n'.join(lines) or None
