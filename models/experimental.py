"""Loading trained weights (``attempt_load``) and model ensembles."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.backend import ExportedModel, is_exported, load_exported
from models.yolo import Detect, DetectionModel
from utils.checkpoint import CheckpointError, load
from utils.compression.channel.pruning import DEFAULT_IMPORTANCE, prune_channels, resolve_round
from utils.compression.weight.magnitude import prune as prune_weights
from utils.compression.weight.magnitude import sparsity
from utils.downloads import attempt_download
from utils.general import LOGGER
from utils.torch_utils import model_info


class Ensemble(nn.ModuleList):
    """Several models whose predictions are concatenated before NMS."""

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False, visualize: bool = False):
        y = [module(x, augment, profile, visualize)[0] for module in self]
        return torch.cat(y, 1), None


def _compat(model: nn.Module, inplace: bool) -> None:
    """Make models pickled by older YOLOv5/torch versions work with this torch version."""
    for m in model.modules():
        t = type(m)
        if t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU, Detect, DetectionModel):
            m.inplace = inplace
        if t is nn.Upsample and not hasattr(m, 'recompute_scale_factor'):
            m.recompute_scale_factor = None  # torch 1.11+ attribute missing from old pickles


def checkpoint_model(ckpt: dict) -> nn.Module:
    """The model a checkpoint dict holds: ``ema`` when present, else ``model``."""
    model = ckpt.get('ema') if ckpt.get('ema') is not None else ckpt.get('model')
    if not isinstance(model, nn.Module):
        raise CheckpointError("checkpoint holds no model under 'ema' or 'model'")
    return model


def attempt_load(weights: str | Path | list, device: torch.device | str | None = None, inplace: bool = True,
                 fuse: bool = True) -> nn.Module:
    """Load one model (or an Ensemble for a list) in FP32 eval mode from YOLOv5 ``.pt`` files.

    Official asset names (``yolov5s.pt`` ...) missing on disk are downloaded like upstream
    (utils.downloads.attempt_download). Names become a dict {index: name}.
    """
    device = torch.device(device) if device is not None else torch.device('cpu')
    ensemble = Ensemble()
    for w in weights if isinstance(weights, (list, tuple)) else [weights]:
        ckpt = load(attempt_download(w), map_location='cpu')
        model = checkpoint_model(ckpt).to(device).float()
        if not hasattr(model, 'stride'):
            model.stride = torch.tensor([32.0])
        if hasattr(model, 'names') and isinstance(model.names, (list, tuple)):
            model.names = dict(enumerate(model.names))
        model = model.fuse().eval() if fuse and hasattr(model, 'fuse') else model.eval()
        ensemble.append(model)
    _compat(ensemble, inplace)
    if len(ensemble) == 1:
        return ensemble[-1]
    for k in ('names', 'nc', 'yaml'):
        setattr(ensemble, k, getattr(ensemble[0], k))
    ensemble.stride = ensemble[int(torch.tensor([m.stride.max() for m in ensemble]).argmax())].stride
    nc = {m.nc if hasattr(m, 'nc') else m.yaml['nc'] for m in ensemble}
    if len(nc) > 1:
        raise CheckpointError(f'ensemble models have different class counts {sorted(nc)}')
    return ensemble


def load_weights(weights: list[str], device: torch.device | str = 'cpu', dnn: bool = False) -> nn.Module:
    """The one loader of val.py and detect.py: unfused FP32 eval-mode model(s) from ``.pt`` files (an Ensemble for
    several) on ``device``, or for an export a models.backend.ExportedModel (.onnx: ONNX Runtime on ``device``, or
    OpenCV DNN if ``dnn``; an OpenVINO folder or .xml: OpenVINO)."""
    if any(is_exported(w) for w in weights):
        return load_exported(weights, device, dnn)
    return attempt_load(weights if len(weights) > 1 else weights[0], device=device, inplace=True, fuse=False)


def prepare_model(model: nn.Module, device: torch.device | str, half: bool = False, prune: float = 0.0,
                  prune_scope: str = 'layer', prune_granularity: str = 'weight', prune_importance: str | None = None,
                  prune_round: int | str = 1):
    """Ready a freshly loaded, unfused model (or Ensemble) for inference; returns (model, SparsityReport).

    When ``prune`` > 0: granularity 'weight' zeroes that fraction of the unfused conv weights in place (what a
    pruned checkpoint holds; fusing keeps zeros zero); 'channel' physically removes that fraction of the prunable
    output channels (utils/compression/channel/pruning.py, ranked by ``prune_importance``: DEFAULT_IMPORTANCE when None, 'l1' or
    'bn'; kept counts rounded up to a multiple of ``prune_round``, 'auto': the device's kernel width) and logs
    parameters and GFLOPs before and after. Otherwise the model's sparsity is measured and logged. Then fuses
    Conv+BN, moves it to ``device`` in eval mode, FP16 if ``half``.
    Shared by val.py and detect.py. An exported model (models.backend.ExportedModel: ONNX, OpenVINO) is used as it is: its weights
    are in the file (report None); pruning it is refused.
    """

    if isinstance(model, ExportedModel):
        if prune:
            raise ValueError('--prune works on .pt weights: prune the checkpoint, then export it')
        return model.eval(), None
    models = list(model) if isinstance(model, Ensemble) else [model]
    if prune and prune_granularity == 'channel':
        prune_round = resolve_round(prune_round, device)
        for m in models:
            LOGGER.info('Before channel pruning:')
            model_info(m)
            prune_channels(m, prune, prune_scope, prune_importance or DEFAULT_IMPORTANCE, prune_round)
        report = sparsity(model)
        LOGGER.info(f'Model {report}')
    elif prune:
        if prune_importance is not None:
            raise ValueError(f'--prune-importance {prune_importance} needs --prune-granularity channel')
        report = prune_weights(model, prune, prune_scope)
    else:
        report = sparsity(model)
        LOGGER.info(f'Model {report}')
    for m in models:
        if hasattr(m, 'fuse'):
            m.fuse()  # logs the summary (parameters, GFLOPs): after channel pruning, the pruned model's
    model = model.to(device).eval()
    return (model.half() if half else model.float()), report
