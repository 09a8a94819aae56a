"""ONNX export of a loaded detector: the graph (one (bs, N, 5+nc) output, like upstream), its metadata and the
optional --simplify pass. export.py is the CLI around it; models/backend.py runs the files.

The exporter is torch's TorchScript-based one (``torch.onnx.export(dynamo=False)``): it needs no package beyond
``onnx`` (the torch.export-based one needs onnxscript and opset >= 18) and gives upstream's graph for every opset
upstream offers (default 12).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from models.backend import require
from models.yolo import Detect
from utils.general import LOGGER, colorstr

# upstream v7.0 export.py --include names; this project writes only ONNX
FORMATS = ('torchscript', 'onnx', 'openvino', 'engine', 'coreml', 'saved_model', 'pb', 'tflite', 'edgetpu', 'tfjs',
           'paddle', 'deep')  # deep: this project's entropy-coded Deep Compression checkpoint (.deep.pt)
SUPPORTED = ('onnx', 'openvino', 'deep')
PREFIX = colorstr('ONNX:')


def check_include(include: list[str] | tuple[str, ...]) -> list[str]:
    """Lower-cased --include formats; ValueError (one line) for unknown or unsupported ones."""
    include = [x.lower() for x in include]
    unknown = [x for x in include if x not in FORMATS]
    if unknown:
        raise ValueError(f"invalid --include {' '.join(unknown)}; valid formats are {', '.join(FORMATS)}")
    unsupported = [x for x in include if x not in SUPPORTED]
    if unsupported:
        raise ValueError(f"--include {' '.join(unsupported)} is not supported: this project exports ONNX "
                         '(--include onnx), OpenVINO (--include openvino) and the entropy-coded Deep Compression '
                         'checkpoint (--include deep)')
    return include


class Predictions(nn.Module):
    """Wraps an eval-mode detector so that its forward returns only the decoded predictions (bs, N, 5+nc).

    The model's own forward returns (predictions, raw maps); selecting the first element here keeps export-only
    branches out of Detect.forward, and the raw maps become dead nodes that the exporter drops.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        return self.model(im)[0]


def detect_head(model: nn.Module) -> Detect:
    """The Detect layer of a DetectionModel."""
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    if not heads:
        raise ValueError('the model has no Detect head: only YOLOv5 detection models can be exported')
    return heads[-1]


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """Upstream's ONNX metadata_props: 'stride' (max stride, pixels, as an integer string) and 'names' (the str() of
    the {index: name} dict)."""
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    return {'stride': str(int(max(model.stride))), 'names': str(names)}


def export_onnx(model: nn.Module, im: torch.Tensor, file: Path, opset: int = 12, dynamic: bool = False,
                simplify: bool = False) -> Path:
    """Write ``model`` (eval mode, fused) traced at input ``im`` to ``file`` (.onnx); returns the file.

    Input 'images' (bs, 3, h, w), output 'output0' (bs, N, 5+nc); ``dynamic`` makes batch, height and width (and N)
    free. The file is checked with onnx.checker and carries onnx_metadata(model).
    """
    onnx = require('onnx', 'ONNX export')
    LOGGER.info(f'\n{PREFIX} starting export with onnx {onnx.__version__} (opset {opset})...')
    head = detect_head(model)
    if dynamic:  # trace the grid construction instead of a cached grid of the dry-run size
        head.clear_grids()
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output0': {0: 'batch', 1: 'anchors'}}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=DeprecationWarning)  # the TorchScript-based exporter is deprecated
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        torch.onnx.export(Predictions(model), (im,), str(file), dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=['images'], output_names=['output0'],
                          dynamic_axes=axes if dynamic else None)
    model_onnx = onnx.load(str(file))
    out = model_onnx.graph.output[0].type.tensor_type.shape.dim[2]
    if not out.dim_value:  # the tracer leaves 5+nc symbolic in dynamic exports: it is fixed, say so
        out.dim_value = head.no
    if simplify:
        model_onnx = simplify_onnx(model_onnx, onnx)
    for k, v in onnx_metadata(model).items():
        meta = model_onnx.metadata_props.add()
        meta.key, meta.value = k, v
    onnx.checker.check_model(model_onnx)
    onnx.save(model_onnx, str(file))
    return file


def simplify_onnx(model_onnx, onnx):
    """--simplify: ONNX Runtime's basic (provider-independent) graph optimizations, i.e. constant folding and
    redundant-node elimination, saved back as a plain ONNX model (only standard-domain ops; unused opset imports
    that onnxruntime declares are dropped). Uses onnxruntime instead of onnx-simplifier (a compiled extra)."""
    import tempfile

    ort = require('onnxruntime', 'ONNX --simplify')
    n0 = len(model_onnx.graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / 'in.onnx', Path(tmp) / 'out.onnx'
        onnx.save(model_onnx, str(src))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), so, providers=['CPUExecutionProvider'])
        out = onnx.load(str(dst))
    domains = {n.domain for n in out.graph.node}
    keep = [op for op in out.opset_import if op.domain in domains or op.domain in ('', 'ai.onnx')]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    foreign = sorted(d for d in domains if d not in ('', 'ai.onnx'))
    if foreign:  # never expected at the basic level: keep the unsimplified graph rather than a non-portable one
        LOGGER.info(f'{PREFIX} simplifier produced non-standard ops ({", ".join(foreign)}): keeping the original')
        return model_onnx
    LOGGER.info(f'{PREFIX} simplified with onnxruntime {ort.__version__}: {n0} -> {len(out.graph.node)} nodes')
    return out
