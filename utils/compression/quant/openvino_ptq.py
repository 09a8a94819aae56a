"""INT8 post-training quantization of a YOLOv5 OpenVINO model with NNCF (OpenVINO's own quantization tool).

What upstream's `export.py --include openvino --int8` does, with this project's choices, measured in docs/export.md:
- preset MIXED (asymmetric activations, upstream's choice) by default: on the shipped model it stays within 0.01
  mAP50-95 of FP32 where PERFORMANCE (symmetric activations, faster kernels on this CPU) does not;
- NNCF's full bias correction (``fast_bias_correction=False``, slower to quantize) instead of its default fast one:
  0.007 mAP50-95 better with either preset;
- the box decode after the Detect output convs (reshape, sigmoid, grid/anchor arithmetic, concat) stays FP32, found
  by graph structure in the ONNX file the model was converted from (ptq.decode_nodes), like the ONNX Runtime INT8
  export; the Detect output convs stay FP32 too unless ``keep_heads`` is False;
- calibration on the same images as ptq.CalibrationImages (the data set's train split letterboxed to the export size).

openvino and nncf are optional dependencies: this module imports them only when called.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.backend import require
from utils.compression.quant.ptq import CalibrationError, CalibrationImages, check_conv_names, decode_nodes

PRESETS = ('performance', 'mixed')  # NNCF QuantizationPreset: symmetric / asymmetric activations
DEFAULT_PRESET = 'mixed'  # measured: docs/export.md


@dataclass
class OpenVinoQuantReport:
    """What quantize_openvino did: convolutions with INT8 inputs, convolutions left FP32, calibration images."""

    quantized: int
    kept_fp32: int
    calib_images: int
    skipped: int
    preset: str

    def __str__(self) -> str:
        return (f'{self.quantized} convolutions INT8, {self.kept_fp32} kept FP32 (Detect convs, excluded; box decode '
                f'FP32); NNCF '
                f'preset {self.preset}; {self.calib_images} calibration images ({self.skipped} unreadable skipped)')


def quantize_openvino(model: Any, onnx_file: str | Path, calib: CalibrationImages, preset: str = DEFAULT_PRESET,
                      keep_fp32: Sequence[str] = (), keep_heads: bool = True,
                      fast_bias_correction: bool = False) -> tuple[Any, OpenVinoQuantReport]:
    """The INT8 form of ``model`` (an openvino.Model converted from ``onnx_file``) and its report.

    ``keep_fp32``: ONNX names of more Conv nodes to leave in FP32 (as ptq.quantize_onnx). ``fast_bias_correction``:
    NNCF's default fast bias correction instead of the full one (benchmarks/int8_settings.py compares them).

    Raises CalibrationError (one line) for a bad preset or when no calibration image can be read, CheckpointError
    when nncf is not installed.
    """
    onnx = require('onnx', 'OpenVINO INT8 export')
    nncf = require('nncf', 'OpenVINO INT8 export (--include openvino --int8)')
    if preset not in PRESETS:
        raise CalibrationError(f"OpenVINO INT8 preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    model_onnx = onnx.load(str(onnx_file), load_external_data=False)
    heads, decode = decode_nodes(model_onnx)
    check_conv_names(model_onnx, keep_fp32)
    # OpenVINO names an ONNX Conv's convolution '<onnx name>/WithoutBiases' and its bias Add '<onnx name>'
    keep = set(decode + heads * keep_heads + list(keep_fp32))
    ignored = [op.get_friendly_name() for op in model.get_ops()
               if op.get_friendly_name() in keep or op.get_friendly_name().rpartition('/')[0] in keep]
    batches = [b[calib.input_name] for b in calib.batches()]
    if not batches:
        raise CalibrationError(f'no calibration image could be read ({calib.skipped} files skipped)')
    import logging

    logging.getLogger('nncf').setLevel(logging.WARNING)  # NNCF logs one INFO line per ignored node
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                      preset=getattr(nncf.QuantizationPreset, preset.upper()),
                      fast_bias_correction=fast_bias_correction,
                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    convs = [op for op in q.get_ops() if op.get_type_name() == 'Convolution']
    n_q = sum(map(int8_weights, convs))
    n_images = len(calib.files) - calib.skipped
    return q, OpenVinoQuantReport(n_q, len(convs) - n_q, n_images, calib.skipped, preset)


def int8_weights(conv: Any) -> bool:
    """True when an OpenVINO Convolution's weights are quantized: a FakeQuantize, or an INT8 constant (NNCF's
    compressed form: Constant i8 -> Convert -> [Subtract] -> Multiply), on the path to its weight input."""
    node = conv.input(1).get_source_output().get_node()
    while node.get_type_name() != 'Constant':
        if node.get_type_name() == 'FakeQuantize':
            return True
        if not node.get_input_size():
            return False
        node = node.input(0).get_source_output().get_node()
    return node.get_element_type().get_type_name() in ('i8', 'u8', 'i4', 'u4')
