"""What every compression method shares: which layers are prunable, the bare model inside a wrapper, the
scope names and the distributed check. A leaf: imports torch only.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

SCOPES = ('layer', 'global')  # a fraction per layer, or one threshold over all layers
GRANULARITIES = ('weight', 'channel')  # zero single weights, or remove whole output channels


def distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel / AveragedModel (`.module`) or ModelEMA (`.ema`)."""
    while True:
        if not isinstance(model, nn.Module) and isinstance(getattr(model, 'ema', None), nn.Module):
            model = model.ema  # ModelEMA is a plain object holding the averaged model
        elif isinstance(model, nn.Module) and set(model._modules) == {'module'}:
            model = model.module  # a wrapper whose only child is the wrapped model
        else:
            break
    if not isinstance(model, nn.Module):
        raise TypeError(f'expected a torch.nn.Module (or a DDP/EMA wrapper of one), got {type(model).__name__}')
    return model


def _is_detect(module: nn.Module) -> bool:
    """True for the YOLOv5 Detect head (or a subclass such as Segment); matched by class name, so that this leaf
    imports no model code."""
    return any(cls.__name__ == 'Detect' for cls in type(module).__mro__) and isinstance(getattr(module, 'm', None),
                                                                                         nn.ModuleList)


def prunable_layers(model: nn.Module,
                    exclude_first: bool = False,
                    exclude_detect: bool = False,
                    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> list[tuple[str, nn.Module]]:
    """Layers whose `.weight` may be pruned, as (name, module) in `named_modules` order.

    Names are relative to the unwrapped model (DDP/EMA wrappers are looked through), so they are the same for a
    model and its wrapper. `exclude_first` drops the model's first nn.Conv2d (the stem); `exclude_detect` drops the
    output convs in the Detect head's `m` ModuleList. Fused and unfused models give the same list.
    """
    model = de_parallel(model)
    excluded: set[int] = set()
    if exclude_first:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            excluded.add(id(first))
    if exclude_detect:
        for m in model.modules():
            if _is_detect(m):
                excluded.update(id(x) for x in m.m.modules())
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, types) and isinstance(getattr(m, 'weight', None), Tensor) and id(m) not in excluded]
