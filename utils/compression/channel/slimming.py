"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017).

Training adds the L1 penalty lambda * sum|gamma| over the BatchNorm scales of the prunable channels (those of the
channel groups in utils/compression/channel/groups.py: not the input image, not grouped convs), driving unimportant channels'
gamma towards 0; channel pruning ranked by |gamma| (val.py/detect.py `--prune-importance bn`) then
removes them. The penalty enters as its subgradient, added to gamma's gradient once per optimizer step, after
GradScaler.unscale_ and clipping and before optimizer.step():

    slim = Slimming(model, lam)                  # after model.to(device)
    ...
    scaler.unscale_(optimizer); clip_grad_norm_(...)
    slim.before_step()                           # gamma.grad += lam * sign(gamma)
    scaler.step(optimizer)

lam is in the units of train.py's loss, which YOLOv5 sums over the batch (loss * batch size), per optimizer step.
Every DDP rank adds the same term to the same all-reduced gradient, so ranks stay identical.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.compression.channel.groups import channel_groups
from utils.compression.hooks import TrainingHook
from utils.compression.layers import de_parallel
from utils.general import LOGGER, colorstr


class Slimming(TrainingHook):
    """L1 subgradient on the BN scales of a YOLOv5 model's prunable channels (see the module docstring)."""

    def __init__(self, model: nn.Module, lam: float) -> None:
        if not lam >= 0:
            raise ValueError(f'slimming lambda must be >= 0, got {lam}')
        self.lam = float(lam)
        gammas = {id(p.bn.weight): p.bn.weight for g in channel_groups(de_parallel(model)) if not g.frozen
                  for p in g.producers if p.bn is not None}
        self.gammas = list(gammas.values())
        if not self.gammas:
            raise ValueError('network slimming found no BatchNorm scales of prunable channels in the model')

    @torch.no_grad()
    def before_step(self) -> None:
        """gamma.grad += lam * sign(gamma) for every managed scale (once per optimizer step)."""
        for g in self.gammas:
            if g.grad is None:
                g.grad = torch.zeros_like(g)
            g.grad.add_(torch.sign(g), alpha=self.lam)

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        """No results.csv columns; logs how far the scales have been driven towards 0."""
        LOGGER.info(f"{colorstr('slimming: ')}{self.gamma_summary()}")
        return {}

    def penalty(self) -> float:
        """lam * sum|gamma| (loss units) for logging."""
        return self.lam * float(sum(g.detach().abs().sum() for g in self.gammas))

    def gamma_summary(self) -> str:
        """'|gamma| median 0.41, 12.0% below 1e-2' over the managed scales."""
        g = torch.cat([x.detach().abs().flatten().float().cpu() for x in self.gammas])
        return f'|gamma| median {g.median():.3g}, {float((g < 1e-2).float().mean()):.1%} below 1e-2 ({g.numel()} channels)'
