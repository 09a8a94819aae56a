"""Model compression for YOLOv5, one family per folder:

    weight/    magnitude pruning (magnitude.py) and Dynamic Network Surgery (dns.py)
    channel/   dependency groups, channel importance + selection + physical shrink, channel DNS, network slimming
    deep/      Deep Compression: weight sharing, Huffman coding, the sparse and `.deep.pt` formats
    layers.py  what all share (prunable layers, de_parallel, scopes);  surgery.py  the base of weight and channel DNS
    hooks.py   the one training-hook protocol train.py calls;  training.py / options.py  train.py's methods and flags

The names below are importable from here (``from utils.compression import prune_channels``); each is loaded on
first use, so importing this package costs nothing and creates no import cycle (models -> utils.torch_utils ->
utils.compression.weight.magnitude passes through this file).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'prune': 'weight.magnitude', 'sparsity': 'weight.magnitude', 'DNS': 'weight.dns',
    'channel_groups': 'channel.groups', 'prune_channels': 'channel.pruning', 'shrink_zero_channels': 'channel.pruning',
    'ChannelDNS': 'channel.dns', 'Slimming': 'channel.slimming',
    'WeightSharing': 'deep.sharing', 'share_weights': 'deep.sharing', 'export_deep': 'deep.deep_file',
    'TrainingHook': 'hooks', 'TrainingHooks': 'hooks', 'make_hooks': 'training',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public name ``name`` from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
