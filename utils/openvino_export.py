"""OpenVINO export, in upstream's layout: ``W_openvino_model/`` (FP32, or ``W_int8_openvino_model/`` with --int8)
holding W.xml + W.bin (the model) and W.yaml (metadata {stride, names}), converted from the FP32 ONNX export.
models/backend.py (OpenVinoModel) runs the folders in val.py and detect.py. openvino (and nncf for INT8) are
optional dependencies, imported only when called.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from models.backend import OPENVINO_DIR, require
from utils.compression.quant.openvino_ptq import DEFAULT_PRESET, OpenVinoQuantReport, quantize_openvino
from utils.compression.quant.ptq import CalibrationImages
from utils.general import LOGGER, colorstr

PREFIX = colorstr('OpenVINO:')


def openvino_dir(weights: str | Path, int8: bool = False) -> Path:
    """best.pt -> best_openvino_model/ (best_int8_openvino_model/ for INT8), next to the weights (upstream's names)."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}_{'int8_' if int8 else ''}{OPENVINO_DIR.lstrip('_')}")


def export_openvino(onnx_file: str | Path, weights: str | Path, metadata: dict, half: bool = False,
                    calib: CalibrationImages | None = None, preset: str = DEFAULT_PRESET,
                    keep_fp32: Sequence[str] = (), keep_heads: bool = True) -> tuple[Path, OpenVinoQuantReport | None]:
    """Convert the FP32 ONNX export ``onnx_file`` of ``weights`` into an OpenVINO folder; returns (folder, report).

    ``metadata``: {'stride': int, 'names': {index: name}}, written as W.yaml. ``half``: FP16 weights in W.bin
    (OpenVINO computes in its own inference precision either way). ``calib``: quantize to INT8 with NNCF on those
    images (utils/compression/quant/openvino_ptq.py; ``keep_fp32``: more ONNX Conv names to leave FP32); the report
    is None without.
    """
    ov = require('openvino', 'OpenVINO export')
    weights = Path(weights)
    out = openvino_dir(weights, int8=calib is not None)
    LOGGER.info(f'\n{PREFIX} starting export with openvino {ov.__version__.split("-")[0]}...')
    model = ov.convert_model(str(onnx_file))
    report = None
    if calib is not None:
        model, report = quantize_openvino(model, onnx_file, calib, preset, keep_fp32, keep_heads)
    out.mkdir(parents=True, exist_ok=True)
    xml = out / f'{weights.stem}.xml'
    ov.save_model(model, str(xml), compress_to_fp16=half)
    names = metadata['names'] if isinstance(metadata['names'], dict) else dict(enumerate(metadata['names']))
    meta = {'stride': int(metadata['stride']), 'names': {int(k): str(v) for k, v in names.items()}}
    xml.with_suffix('.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
    return out, report
