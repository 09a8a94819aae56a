"""INT8 post-training static quantization of an exported YOLOv5 ONNX file with ONNX Runtime's tooling.

The result is a QDQ model (QuantizeLinear/DequantizeLinear pairs around the float ops, which ONNX Runtime fuses into
integer kernels: VNNI/AMX on recent x86 CPUs): weights INT8, symmetric and per output channel; activations UINT8,
asymmetric, per tensor, with ranges calibrated on images of the data set's train split, preprocessed exactly as
val.py and detect.py feed a fixed-size export (letterboxed to the export size, RGB, 0-1).

The box decoding after the Detect output convs (reshape, sigmoid, grid/anchor arithmetic, the final concat) stays
FP32: 8 bits cannot hold pixel coordinates up to the image size next to sub-pixel offsets, which is known to break
INT8 YOLOv5 exports. `decode_nodes` finds it as everything downstream of the Detect convs, by graph structure.
The Detect output convs stay FP32 too (``keep_heads``): one per-tensor UINT8 scale for their outputs (box offsets,
objectness and class logits of every anchor side by side) cost the shipped model 0.019 mAP50-95 against 0.008 with
them in FP32 (docs/export.md); they are 3 small 1x1 convs. `keep_fp32` names more convs to leave in FP32.

onnx and onnxruntime are optional dependencies: this module imports them only when called.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.backend import require
from utils.augmentations import letterbox
from utils.dataloaders import LoadImagesAndLabels
from utils.general import LOGGER, colorstr

PREFIX = colorstr('INT8:')
CALIB_METHODS = ('minmax', 'entropy', 'percentile')  # ORT's CalibrationMethod MinMax / Entropy / Percentile
DEFAULT_CALIB_METHOD = 'minmax'  # measured best on the embedded set: docs/export.md
DEFAULT_CALIB_IMAGES = 128


class CalibrationError(ValueError):
    """No usable calibration image, or a bad calibration setting (one line)."""


class CalibrationImages:
    """ONNX Runtime calibration data reader: up to ``n`` images of ``path`` (folders, *.txt lists, files), each
    letterboxed to ``shape`` (h, w) pixels like a fixed-size export sees it, as {'images': float32 (b, 3, h, w) 0-1}
    batches of ``batch`` (the export's batch size). Unreadable images are skipped and counted (``skipped``)."""

    def __init__(self, path: str | Path | list, shape: tuple[int, int], n: int = DEFAULT_CALIB_IMAGES,
                 batch: int = 1, input_name: str = 'images') -> None:
        if n < 1:
            raise CalibrationError(f'--calib-images must be >= 1, got {n}')
        try:
            files = LoadImagesAndLabels.list_images(path, '')
        except FileNotFoundError as e:
            raise CalibrationError(f'no calibration images: {e}') from None
        step = max(len(files) // n, 1)  # spread over the split rather than its first (often similar) files
        self.files, self.shape, self.batch, self.input_name = files[::step][:n], tuple(shape), batch, input_name
        self.skipped = 0
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def images(self) -> Iterator[np.ndarray]:
        """Preprocessed images (3, h, w) float32, skipping (and counting) unreadable files."""
        for f in self.files:
            im = cv2.imread(f)
            if im is None:
                self.skipped += 1
                LOGGER.warning(f'{PREFIX} skipping unreadable calibration image {f}')
                continue
            im = letterbox(im, self.shape, auto=False, scaleup=False)[0]
            yield np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / 255

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Full batches of ``batch`` images (a last partial batch is padded by repeating its images)."""
        buf = []
        for im in self.images():
            buf.append(im)
            if len(buf) == self.batch:
                yield {self.input_name: np.stack(buf)}
                buf = []
        if buf:
            yield {self.input_name: np.stack((buf * self.batch)[:self.batch])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """ORT's reader protocol: the next batch, None when done."""
        if self._it is None:
            self._it = self.batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def decode_nodes(model_onnx: Any) -> tuple[list[str], list[str]]:
    """(names of the Detect output convs, names of every node downstream of them: the decode to keep FP32).

    The Detect convs are the last Conv on each path to the graph output: the Conv nodes from which the output is
    reachable without passing another Conv.
    """
    graph = model_onnx.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    producer = {y: node for node in graph.node for y in node.output}
    heads, seen, stack = [], set(), [o.name for o in graph.output]
    while stack:  # walk up from the outputs, stopping at Conv nodes
        t = stack.pop()
        node = producer.get(t)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == 'Conv':
            heads.append(node.name)
        else:
            stack.extend(node.input)
    by_name = {n.name: n for n in graph.node}
    down, stack = set(), [y for h in heads for y in by_name[h].output]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in down:
                down.add(node.name)
                stack.extend(node.output)
    order = [n.name for n in graph.node]
    return sorted(heads, key=order.index), [n for n in order if n in down]


def check_conv_names(model_onnx: Any, names: Sequence[str]) -> None:
    """CalibrationError (one line) unless every name in ``names`` (--int8-keep-fp32) is a Conv node of the graph."""
    convs = {n.name for n in model_onnx.graph.node if n.op_type == 'Conv'}
    bad = [k for k in names if k not in convs]
    if bad:
        raise CalibrationError(f'--int8-keep-fp32: no Conv node named {bad[0]} (names look like {sorted(convs)[0]})')


@dataclass
class QuantReport:
    """What quantize_onnx did: node counts and file sizes (bytes)."""

    quantized: int  # float ops ORT quantized (with a QDQ pair on their inputs)
    kept_fp32: int  # compute nodes left in FP32 (the decode, keep_fp32 convs)
    fp32_bytes: int
    int8_bytes: int
    calib_images: int
    skipped: int

    def __str__(self) -> str:
        return (f'{self.quantized} nodes quantized, {self.kept_fp32} kept FP32 (Detect convs, box decode, excluded); '
                f'{self.calib_images} calibration images ({self.skipped} unreadable skipped); '
                f'{self.fp32_bytes / 1e6:.2f} MB FP32 -> {self.int8_bytes / 1e6:.2f} MB INT8')


def quantize_onnx(src: str | Path, dst: str | Path, calib: CalibrationImages, method: str = DEFAULT_CALIB_METHOD,
                  keep_fp32: Sequence[str] = (), keep_heads: bool = True) -> QuantReport:
    """Write the INT8 QDQ model of the FP32 ONNX file ``src`` (opset >= 13) to ``dst``; returns the report.

    ``keep_fp32``: names of Conv nodes (e.g. '/model/model.0/conv/Conv') to leave in FP32 besides the decode and,
    with ``keep_heads``, the Detect output convs.
    The file keeps ``src``'s metadata (stride, names), so val.py/detect.py read it like any export.
    """
    onnx = require('onnx', 'INT8 export')
    require('onnxruntime', 'INT8 export')
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise CalibrationError(f"onnxruntime's quantization tooling is missing ({e}): pip install -U onnxruntime") \
            from None
    if method not in CALIB_METHODS:
        raise CalibrationError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    model = onnx.load(str(src))
    opset = max(op.version for op in model.opset_import if op.domain in ('', 'ai.onnx'))
    if opset < 13:
        raise CalibrationError(f'per-channel INT8 needs opset >= 13, {src} has {opset}')
    heads, decode = decode_nodes(model)
    check_conv_names(model, keep_fp32)
    exclude = decode + heads * keep_heads + [k for k in keep_fp32 if not (keep_heads and k in heads)]
    calib_method = {'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
                    'percentile': CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / 'pre.onnx'
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # shapes + folding, ORT's recommended step
        quantize_static(str(pre), str(dst), calib, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=calib_method, calibration_providers=['CPUExecutionProvider'],
                        extra_options={'WeightSymmetric': True, 'ActivationSymmetric': False,
                                       'CalibMovingAverage': False})
    if calib.skipped == len(calib.files):
        raise CalibrationError(f'no calibration image could be read ({calib.skipped} files skipped)')
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    q.metadata_props.extend(model.metadata_props)
    onnx.save(q, str(dst))
    quantized = {n.output[0] for n in q.graph.node if n.op_type == 'DequantizeLinear'}
    users = {n.name for n in q.graph.node if n.op_type not in ('QuantizeLinear', 'DequantizeLinear')
             and any(x in quantized for x in n.input)}
    compute = [n for n in q.graph.node if n.op_type not in ('QuantizeLinear', 'DequantizeLinear', 'Constant')]
    return QuantReport(len(users), len([n for n in compute if n.name not in users]), Path(src).stat().st_size,
                       Path(dst).stat().st_size, len(calib.files) - calib.skipped, calib.skipped)


def int8_path(weights: str | Path) -> Path:
    """best.pt -> best-int8.onnx (next to the weights)."""
    weights = Path(weights)
    return weights.with_name(f'{weights.stem}-int8.onnx')
