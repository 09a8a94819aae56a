"""PyTorch Hub entry points, named and called like upstream YOLOv5 v7.0's hubconf.py.

Usage:
    import torch
    model = torch.hub.load('path/to/this/repo', 'custom', 'best.pt', source='local')   # any weights written here
    model = torch.hub.load('.', 'custom', 'best.onnx', source='local')                 # an export.py ONNX file
    model = torch.hub.load('.', 'yolov5s', source='local')          # official weights, downloaded like the CLIs
    model = torch.hub.load('.', 'yolov5n', pretrained=False, classes=3, source='local')  # untrained, from the yaml
    results = model(['data/images/shapes_1.jpg'], size=256)
    results.print(); results.pandas().xyxy[0]

``custom`` reads every weight form this project writes (dense, pruned, DNS-trained, channel-pruned, compact
``.pt``, ``.deep.pt``, ``.onnx``) through the CLIs' loader (models.experimental.load_weights + prepare_model), so a
model here gives the boxes detect.py gives. Loading errors are one line (FileNotFoundError, CheckpointError,
DownloadError, DeviceError, ValueError). Nothing is imported or done until an entry point is called.
"""
from __future__ import annotations

dependencies = ['torch', 'yaml']  # checked by torch.hub before an entry point runs (upstream's list)


def _create(name: str, pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None, **prune_kw):
    """Load (or build) a YOLOv5 model, wrapped in models.autoshape.AutoShape when ``autoshape``.

    name: a model name ('yolov5s': <name>.pt, downloaded when it is an official asset) or a weights path (no suffix:
    .pt). With pretrained and the default channels=3 / classes=80 the file's own model is loaded as it is (a
    channel-pruned model keeps its widths), fused, FP32, eval; prune_kw (prune, prune_scope, prune_granularity,
    prune_importance, prune_round) prunes it first like val.py/detect.py --prune. Otherwise the model is built from
    models/<name>.yaml with ``channels`` input channels and ``classes`` classes, and, if pretrained, gets the
    matching weights of <name>.pt. device: '' or None (CUDA 0 if available, else CPU), 'cpu', '0', a torch.device.
    """
    import logging
    from pathlib import Path

    from models.autoshape import AutoShape
    from models.experimental import checkpoint_model, load_weights, prepare_model
    from models.yolo import DetectionModel, find_model_yaml
    from utils.checkpoint import CheckpointError, load
    from utils.downloads import DownloadError, attempt_download
    from utils.general import LOGGER, intersect_dicts, set_logging
    from utils.torch_utils import DeviceError, select_device

    if not LOGGER.handlers and not logging.getLogger().handlers:
        set_logging()  # nobody configured logging: show INFO lines (results.print()) like the CLIs do
    level = LOGGER.level
    if not verbose:
        LOGGER.setLevel(logging.WARNING)
    try:
        device = select_device('' if device is None else device)
        path = Path(str(name))
        path = path.with_suffix('.pt') if path.suffix == '' and not path.is_dir() else path
        if pretrained and channels == 3 and classes == 80:
            model, _ = prepare_model(load_weights([str(path)], device), device, **prune_kw)
        else:
            if prune_kw:
                raise ValueError(f'prune options work on loaded weights, not on a model built from {path.stem}.yaml')
            model = DetectionModel(find_model_yaml(f'{path.stem}.yaml'), ch=channels, nc=classes)
            if pretrained:
                source = checkpoint_model(load(attempt_download(path))).float()
                csd = intersect_dicts(source.state_dict(), model.state_dict(), exclude=('anchors',))
                model.load_state_dict(csd, strict=False)
                names = getattr(source, 'names', None) or {}
                names = names if isinstance(names, dict) else dict(enumerate(names))
                if len(names) == classes:
                    model.names = names
                LOGGER.info(f'Transferred {len(csd)}/{len(model.state_dict())} items from {path}')
            model = model.to(device)
        return AutoShape(model, verbose).to(device) if autoshape else model
    except (FileNotFoundError, CheckpointError, DownloadError, DeviceError, ValueError) as e:
        raise e.with_traceback(None) from None  # the one-line message, not the loader's inner frames
    finally:
        LOGGER.setLevel(level)


def custom(path: str = 'path/to/model.pt', autoshape: bool = True, _verbose: bool = True, device=None,
           verbose: bool | None = None, prune: float = 0.0, prune_scope: str = 'layer',
           prune_granularity: str = 'weight', prune_importance: str | None = None, prune_round: int | str = 1):
    """A custom or local model: any .pt / .deep.pt / .onnx written here or by upstream (torch.hub passes
    ``verbose`` to itself: use ``_verbose``). prune > 0: prune the loaded .pt like ``val.py --prune`` (fraction of
    weights, or of channels with prune_granularity='channel')."""
    prune_kw = {'prune': prune, 'prune_scope': prune_scope, 'prune_granularity': prune_granularity,
                'prune_importance': prune_importance, 'prune_round': prune_round} if prune else {}
    return _create(path, autoshape=autoshape, verbose=_verbose if verbose is None else verbose, device=device,
                   **prune_kw)


def yolov5n(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device=None):
    """YOLOv5-nano (official yolov5n.pt, or built from models/yolov5n.yaml when not pretrained)."""
    return _create('yolov5n', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5s(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device=None):
    """YOLOv5-small."""
    return _create('yolov5s', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5m(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device=None):
    """YOLOv5-medium."""
    return _create('yolov5m', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5l(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device=None):
    """YOLOv5-large."""
    return _create('yolov5l', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5x(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            _verbose: bool = True, device=None):
    """YOLOv5-xlarge."""
    return _create('yolov5x', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5n6(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
             _verbose: bool = True, device=None):
    """YOLOv5-nano-P6 (four output levels, 1280 px training size)."""
    return _create('yolov5n6', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5s6(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
             _verbose: bool = True, device=None):
    """YOLOv5-small-P6."""
    return _create('yolov5s6', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5m6(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
             _verbose: bool = True, device=None):
    """YOLOv5-medium-P6."""
    return _create('yolov5m6', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5l6(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
             _verbose: bool = True, device=None):
    """YOLOv5-large-P6."""
    return _create('yolov5l6', pretrained, channels, classes, autoshape, _verbose, device)


def yolov5x6(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
             _verbose: bool = True, device=None):
    """YOLOv5-xlarge-P6."""
    return _create('yolov5x6', pretrained, channels, classes, autoshape, _verbose, device)
