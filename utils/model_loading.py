"""Which weights and which data set val.py evaluates: weights resolved (official names downloaded, else the shipped
model), the data set a model was trained on when --data is not given, and the unfused model checked against the
data's class count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from models.backend import is_exported, load_exported
from models.experimental import Ensemble, checkpoint_model, load_weights
from models.yolo import DetectionModel
from utils.checkpoint import load
from utils.coco_eval import coco_names
from utils.downloads import attempt_download
from utils.general import LOGGER, ROOT, yaml_load
from utils.torch_utils import de_parallel

DEFAULT_DATA = ROOT / 'data' / 'shapes.yaml'  # the embedded set: the shipped model's
COCO_DATA = ROOT / 'data' / 'coco.yaml'  # for official weights (COCO's 80 class names)
DEFAULT_WEIGHTS = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'  # shipped trained model (when present)
DEFAULT_CFG = 'yolov5n.yaml'  # random-init fallback when no weights are given or shipped


def rel_path(p: Path) -> str:
    """A path relative to the repo root when inside it (for messages)."""
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def resolve_weights(weights: str | Path | list | tuple | None) -> list[str]:
    """Weights files to load: as given, else the shipped DEFAULT_WEIGHTS, else [] (random-init yolov5n).

    Official asset names missing on disk are downloaded here (DownloadError when that fails), before any data set.
    """
    if isinstance(weights, (str, Path)):
        weights = [weights]
    weights = [str(attempt_download(w)) for w in (weights or []) if str(w)]
    if not weights and DEFAULT_WEIGHTS.is_file():
        weights = [str(DEFAULT_WEIGHTS)]
    return weights


def model_nc(model: nn.Module) -> int:
    """Number of classes a detector (or the first model of an Ensemble) predicts."""
    m = de_parallel(model)
    m = m[0] if isinstance(m, Ensemble) else m
    head = m.model[-1] if hasattr(m, 'model') else None
    return int(getattr(head, 'nc', None) or getattr(m, 'nc', None) or m.yaml['nc'])


def _name_list(names: Any) -> list[str]:
    """Class names of a model or data yaml (list or {index: name}) as a list in index order."""
    names = names or []
    return [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]


def _recorded_data(ckpt: dict, names: list[str]) -> Path | None:
    """The data yaml a training checkpoint records (``opt['data']``) when it is found here (as recorded, else by
    file name in data/) and has the model's class names."""
    opt = ckpt.get('opt')
    rec = opt.get('data') if isinstance(opt, dict) else getattr(opt, 'data', None)
    if not isinstance(rec, (str, Path)) or Path(rec).suffix not in ('.yaml', '.yml'):
        return None
    for f in (Path(rec), ROOT / 'data' / Path(rec).name):
        try:
            if f.is_file() and _name_list(yaml_load(f).get('names')) == names:
                return f
        except (OSError, AttributeError, yaml.YAMLError):  # unreadable, or not a mapping: not this one
            continue
    return None


def default_data(weights: list[str], single_cls: bool = False) -> tuple[str, str]:
    """The data yaml to evaluate ``weights`` on when --data is not given, and why (for the first log line).

    From the first weights file: the data set its checkpoint records (``opt['data']``, written by this project's
    and upstream's train.py) when that yaml exists here with the model's class names; else data/coco.yaml for a
    model whose class names are COCO's 80 (official weights); else the embedded data/shapes.yaml (the shipped
    model's). Raises ValueError when the model's class count differs from that default's (unless ``single_cls``),
    saying that it is the default. Official asset names missing on disk are downloaded first (DownloadError).
    """
    if not weights:
        return str(DEFAULT_DATA), '--data not given and no weights: the embedded set'
    w = Path(weights[0])
    if is_exported(w):  # an export carries its class names in its metadata, but no training options
        model = load_exported([str(w)])
        nc, names, recorded = model_nc(model), _name_list(getattr(model, 'names', None)), None
    else:
        ckpt = load(attempt_download(w))
        model = checkpoint_model(ckpt)
        nc, names = model_nc(model), _name_list(getattr(model, 'names', None))
        recorded = _recorded_data(ckpt, names)
        del ckpt
    del model
    if recorded:
        file, why = recorded, f'the data set {w.name} was trained on (its checkpoint records it)'
    elif names == coco_names():
        file, why = COCO_DATA, f"{w.name} predicts COCO's 80 classes"
    elif names == _name_list(yaml_load(DEFAULT_DATA)['names']):
        file, why = DEFAULT_DATA, f"{w.name} predicts the embedded set's classes"
    else:
        file, why = DEFAULT_DATA, f"the embedded set: {w.name} records no data set with its classes found here " \
                                  f"and they are not COCO's"
    data_nc = len(yaml_load(file).get('names') or [])
    if not single_cls and data_nc != nc:
        raise ValueError(f'{w.name} has {nc} classes but the default --data {rel_path(file)} has {data_nc} ({why}); '
                         f'pass --data with the data set {w.name} was trained on')
    return str(file), f'--data not given: {why}'


def data_or_default(data: str | Path | dict | None, weights: list[str], single_cls: bool = False) -> str | Path | dict:
    """``data`` as given, or default_data() for the weights, logged with the reason."""
    if data is None:
        data, why = default_data(weights, single_cls)
        LOGGER.info(f'data={data} ({why})')
    return data


def load_unfused(weights: list[str], data: dict, single_cls: bool = False, src: str = '',
                 device: torch.device | str = 'cpu', dnn: bool = False) -> nn.Module:
    """FP32 CPU eval-mode model from weights files (an Ensemble for several), or a random-init yolov5n for [].

    One export gives a models.backend.ExportedModel (.onnx: ONNX Runtime on ``device``, or OpenCV DNN if
    ``dnn``; an OpenVINO folder or .xml: OpenVINO).
    Raises ValueError when the model's class count differs from the data's (unless single_cls); ``src`` names
    the data yaml in that message.
    """
    nc = int(data['nc'])
    if weights:
        model = load_weights(weights, device, dnn)
    else:
        LOGGER.warning(f'WARNING ⚠️ no trained weights found ({rel_path(DEFAULT_WEIGHTS)} missing, no '
                       f'--weights given), evaluating a randomly initialised {Path(DEFAULT_CFG).stem} with nc={nc}')
        model = DetectionModel(DEFAULT_CFG, nc=nc).eval()
        model.names = dict(data['names'])
    ncm = model_nc(model)
    if not single_cls and ncm != nc:
        raise ValueError(f"{' '.join(weights)} has {ncm} classes but the --data you passed{f' ({src})' if src else ''} "
                         f'has {nc}; pass --weights and --data that were trained together')
    return model
