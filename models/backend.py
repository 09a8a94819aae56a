"""Exported detectors behind a model-like interface for val.py and detect.py: an ``.onnx`` file run by ONNX Runtime
(or OpenCV DNN with ``--dnn``), and an OpenVINO model (upstream's ``W_openvino_model/`` folder, or its ``.xml``).

``OnnxModel`` and ``OpenVinoModel`` (both ``ExportedModel``) have what those scripts read from a DetectionModel:
``stride``, ``names``, ``nc`` and a forward returning ``(predictions (bs, N, 5+nc), None)`` like an eval-mode model
(xywh in input pixels, objectness, class scores). Class names and stride come from the export's metadata as upstream's
export.py writes it: the ONNX ``metadata_props`` 'stride' = "32", 'names' = "{0: 'person', ...}"
(utils/onnx_export.py), and the OpenVINO folder's ``W.yaml`` {stride: 32, names: {0: person, ...}}.
onnx / onnxruntime / openvino are optional dependencies, imported only when such a file is used.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from utils.checkpoint import CheckpointError
from utils.general import LOGGER

ONNX_INSTALL = 'pip install onnx onnxruntime'
INSTALL = {'onnx': ONNX_INSTALL, 'onnxruntime': ONNX_INSTALL, 'openvino': 'pip install openvino',
           'nncf': 'pip install openvino nncf'}
OPENVINO_DIR = '_openvino_model'  # upstream's folder suffix: best_openvino_model/, best_int8_openvino_model/


def is_onnx(weights: str | Path) -> bool:
    """True for a path with the ``.onnx`` suffix (any case)."""
    return Path(str(weights)).suffix.lower() == '.onnx'


def is_openvino(weights: str | Path) -> bool:
    """True for an OpenVINO model: a ``*_openvino_model`` folder (upstream's export) or an ``.xml`` file."""
    p = Path(str(weights))
    return p.name.endswith(OPENVINO_DIR) or p.suffix.lower() == '.xml'


def is_exported(weights: str | Path) -> bool:
    """True for an exported model (ONNX or OpenVINO) rather than a PyTorch checkpoint."""
    return is_onnx(weights) or is_openvino(weights)


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency (``onnx``, ``onnxruntime``, ``openvino``, ``nncf``) or raise CheckpointError
    with the one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CheckpointError(f"{purpose} needs the optional package {module}: "
                              f"{INSTALL.get(module, f'pip install {module}')}") from None


def parse_metadata(props: dict[str, str]) -> tuple[int | None, dict[int, str] | None]:
    """(stride, names) from an ONNX file's metadata_props; None for a missing or unreadable entry.

    'names' is a Python dict literal ("{0: 'circle', 1: 'rectangle'}", upstream's format), read with
    ast.literal_eval: literals only, never code.
    """
    stride = names = None
    try:
        stride = int(props['stride'])
    except (KeyError, ValueError):
        pass
    try:
        d = ast.literal_eval(props['names'])
        if isinstance(d, (list, tuple)):
            d = dict(enumerate(d))
        if isinstance(d, dict):
            names = {int(k): str(v) for k, v in d.items()}
    except (KeyError, ValueError, SyntaxError, TypeError):
        pass
    return stride, names


class ExportedModel(nn.Module):
    """What OnnxModel and OpenVinoModel share: metadata, the input-shape rules and the chunked forward.

    ``input_shape`` is the exported (batch, height, width), None for each dynamic axis. A fixed batch is served by
    running chunks (the last one zero-padded); a fixed height/width must be met by the caller (see
    ``fixed_imgsz``). Subclasses set ``backend`` and implement ``_run`` (numpy in, numpy out).
    """

    file: Path
    backend: str

    def _setup(self, stride: int | None, names: dict[int, str] | None, in_shape: list, in_type: str,
               out_shape: list) -> None:
        """Check the I/O shapes and set input_shape, fp16, nc, names and stride (logged)."""
        if len(in_shape) != 4 or len(out_shape) != 3:
            raise CheckpointError(f'{self.file} is not a YOLOv5 detector export: input {list(in_shape)}, output '
                                  f'{list(out_shape)} (expected (batch, 3, height, width) -> (batch, anchors, 5+nc))')
        dims = [d if isinstance(d, int) and d > 0 else None for d in in_shape]
        self.input_shape = (dims[0], dims[2], dims[3])
        self.fp16 = 'float16' in str(in_type) or str(in_type) == 'f16'
        no = out_shape[2] if isinstance(out_shape[2], int) and out_shape[2] > 0 else None
        nc = no - 5 if no else len(names or {})
        if names is None or len(names) != nc:
            LOGGER.warning(f'WARNING ⚠️ {self.file.name} has no class names in its metadata; using class indices')
            names = {i: str(i) for i in range(nc)}
        if not nc:
            raise CheckpointError(f'{self.file}: cannot tell the number of classes (no output size, no names)')
        self.nc, self.names, self._told = nc, names, False
        self.stride = torch.tensor([float(stride or 32)])
        LOGGER.info(f'Loaded {self.file.name} with {self.backend}: input {tuple(in_shape)}, {nc} classes, '
                    f'stride {int(self.stride)}{", FP16" if self.fp16 else ""}')

    def fixed_imgsz(self) -> tuple[int, int] | None:
        """The (height, width) in pixels a fixed-shape export must be run at; None when exported with --dynamic."""
        _, h, w = self.input_shape
        return (h, w) if h and w else None

    def forward(self, im: torch.Tensor, augment: bool = False, profile: bool = False, visualize=False):
        """im (bs, 3, h, w) 0-1 -> (predictions (bs, N, 5+nc) float32 on im's device, None)."""
        if (augment or visualize) and not self._told:
            LOGGER.info(f'--augment / --visualize need the PyTorch model: {self.file.name} runs without them')
            self._told = True
        bs, fixed_bs = im.shape[0], self.input_shape[0]
        if self.fixed_imgsz() and tuple(im.shape[2:]) != self.fixed_imgsz():
            raise ValueError(f'{self.file.name} was exported for {self.fixed_imgsz()} (h, w) inputs, got '
                             f'{tuple(im.shape[2:])}: run it at that size or export with --dynamic')
        x = im.detach().cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
        if fixed_bs:  # fixed batch: run chunks of that size, zero-padding the last one
            pad = -bs % fixed_bs
            if pad:
                x = np.concatenate((x, np.zeros((pad, *x.shape[1:]), x.dtype)))
            y = np.concatenate([self._run(x[i:i + fixed_bs]) for i in range(0, len(x), fixed_bs)])[:bs]
        else:
            y = self._run(x)
        return torch.from_numpy(y.astype(np.float32)).to(im.device), None

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxModel(ExportedModel):
    """A YOLOv5 ``.onnx`` export run by ONNX Runtime (CUDA provider when ``device`` is CUDA and it is installed,
    else CPU) or by OpenCV DNN (``dnn=True``, CPU)."""

    def __init__(self, file: str | Path, device: torch.device | str = 'cpu', dnn: bool = False):
        super().__init__()
        self.file = Path(file)
        if not self.file.is_file():
            raise FileNotFoundError(f'weights not found: {self.file}')
        device = torch.device(device)
        self.dnn = dnn
        if dnn:
            self.backend = 'OpenCV DNN'
            if device.type != 'cpu':
                LOGGER.info(f'--dnn runs on the CPU here (not {device})')
            import cv2
            props, in_shape, in_type, out_shape = self._describe(require('onnx', '--dnn with ONNX metadata'))
            try:
                self.net = cv2.dnn.readNetFromONNX(str(self.file))
            except cv2.error as e:
                raise CheckpointError(f'OpenCV DNN cannot read {self.file}: {_first_line(e)}') from None
        else:
            ort = require('onnxruntime', 'running an .onnx model')
            providers = ['CPUExecutionProvider']
            if device.type == 'cuda':
                if 'CUDAExecutionProvider' in ort.get_available_providers():
                    providers.insert(0, ('CUDAExecutionProvider', {'device_id': device.index or 0}))
                else:
                    LOGGER.info('onnxruntime has no CUDA provider (pip install onnxruntime-gpu): running on the CPU')
            try:
                self.session = ort.InferenceSession(str(self.file), providers=providers)
            except Exception as e:  # onnxruntime raises its own pybind error types for unreadable or invalid files
                raise CheckpointError(f'{self.file} is not a valid ONNX model ({_first_line(e)})') from None
            self.backend = f"ONNX Runtime {ort.__version__} ({self.session.get_providers()[0]})"
            meta = self.session.get_modelmeta().custom_metadata_map
            inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
            props, in_shape, in_type, out_shape = meta, inp.shape, inp.type, out.shape
        self._setup(*parse_metadata(props), in_shape, in_type, out_shape)

    def _describe(self, onnx: ModuleType) -> tuple[dict, list, str, list]:
        """(metadata, input dims, input element type, output dims) read with the onnx package (for --dnn)."""
        try:
            m = onnx.load(str(self.file), load_external_data=False)
        except Exception as e:
            raise CheckpointError(f'{self.file} is not a valid ONNX model ({_first_line(e)})') from None
        if not m.graph.input or not m.graph.output:
            raise CheckpointError(f'{self.file} has no graph inputs/outputs: not a YOLOv5 export')

        def dims(v) -> list:
            return [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]

        inp, out = m.graph.input[0], m.graph.output[0]
        in_type = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
        return {p.key: p.value for p in m.metadata_props}, dims(inp), in_type, dims(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.dnn:
            self.net.setInput(x)
            return self.net.forward()
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]


def openvino_xml(path: str | Path) -> Path:
    """The ``.xml`` of an OpenVINO model given as the file or as its folder (upstream's ``W_openvino_model/``)."""
    p = Path(path)
    if p.is_dir():
        xmls = sorted(p.glob('*.xml'))
        if len(xmls) != 1:
            raise CheckpointError(f'{p} should hold one OpenVINO .xml model, found {len(xmls)}')
        return xmls[0]
    if not p.is_file():
        raise FileNotFoundError(f'weights not found: {p}')
    return p


def read_openvino_metadata(file: Path) -> tuple[int | None, dict[int, str] | None]:
    """(stride, names) from the ``W.yaml`` next to ``W.xml`` (upstream's metadata file); Nones where missing.

    Read with yaml.safe_load: plain data only, never objects.
    """
    import yaml

    try:
        d = yaml.safe_load(file.with_suffix('.yaml').read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None, None
    if not isinstance(d, dict):
        return None, None
    return parse_metadata({k: str(d[k]) for k in ('stride', 'names') if k in d})


class OpenVinoModel(ExportedModel):
    """A YOLOv5 OpenVINO model (``W_openvino_model/`` with W.xml, W.bin, W.yaml, as upstream's export.py writes it)
    run by OpenVINO on the CPU, at OpenVINO's default inference precision (bf16 on CPUs with AMX or AVX512-BF16,
    f32 elsewhere; an INT8 model runs its quantized layers in INT8) unless ``precision`` ('f32', 'bf16', 'f16')."""

    def __init__(self, path: str | Path, device: torch.device | str = 'cpu', precision: str = ''):
        super().__init__()
        ov = require('openvino', 'running an OpenVINO model')
        self.file = openvino_xml(path)
        if torch.device(device).type != 'cpu':
            LOGGER.info(f'OpenVINO models run on the CPU here (not {device})')
        core = ov.Core()
        try:
            model = core.read_model(str(self.file))
            config = {'INFERENCE_PRECISION_HINT': precision} if precision else {}
            self.compiled = core.compile_model(model, 'CPU', config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for unreadable files
            raise CheckpointError(f'{self.file} is not a valid OpenVINO model ({_first_line(e)})') from None
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property('INFERENCE_PRECISION_HINT')
        self.precision = getattr(hint, 'get_type_name', lambda: str(hint))()
        self.backend = f'OpenVINO {ov.__version__.split("-")[0]} (CPU, {self.precision} inference precision)'
        inp, out = model.inputs[0], model.outputs[0]

        def dims(port) -> list:
            return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]

        self._setup(*read_openvino_metadata(self.file), dims(inp), inp.get_element_type().get_type_name(),
                    dims(out))

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__


def load_exported(weights: list[str], device: torch.device | str = 'cpu', dnn: bool = False) -> ExportedModel:
    """The OnnxModel or OpenVinoModel of a one-file ``--weights`` list (ensembles need .pt files)."""
    if len(weights) != 1:
        raise ValueError(f'exported weights run one model at a time, got {len(weights)} files (ensembles need .pt '
                         'files)')
    if is_openvino(weights[0]):
        if dnn:
            LOGGER.info('--dnn selects OpenCV DNN for .onnx files; an OpenVINO model runs in OpenVINO')
        return OpenVinoModel(weights[0], device)
    return OnnxModel(weights[0], device, dnn)


def fixed_input(model: nn.Module, imgsz: int | list[int]) -> tuple[int, int] | None:
    """For a fixed-shape export, the (h, w) it must run at (logging when that overrides ``imgsz``); else None."""
    fixed = model.fixed_imgsz() if isinstance(model, ExportedModel) else None
    if fixed:
        asked = tuple(imgsz) if isinstance(imgsz, (list, tuple)) else (imgsz, imgsz)
        LOGGER.info(f'{model.file.name} has a fixed input shape: running letterboxed {fixed[0]}x{fixed[1]} '
                    f'(h x w) images{"" if asked == fixed else f", not --imgsz {asked}"} (export with --dynamic '
                    'for any size and rectangular batches)')
    return fixed
