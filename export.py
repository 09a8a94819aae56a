"""Export a YOLOv5 PyTorch model to ONNX (upstream v7.0 export.py flags) or to this project's entropy-coded form.

Usage:
    python export.py --weights best.pt --include onnx --img 256                 # best.onnx next to best.pt
    python export.py --weights best.pt --img 640 --dynamic --simplify           # any batch size / image size
    python export.py --weights a.pt b.pt --img 256 --batch-size 8 --half --device 0   # FP16 (CUDA only)
    python export.py --weights sparse.pt --include deep                         # sparse.deep.pt (Deep Compression)
    python export.py --weights best.pt --img 256 --int8 [--data D]              # + best-int8.onnx (INT8, calibrated)
    python export.py --weights best.pt --img 256 --include openvino [--int8]    # best_[int8_]openvino_model/

Inference with the exported file (ONNX Runtime, or OpenCV DNN with --dnn; OpenVINO for the folders):
    python val.py --weights best.onnx --img 256
    python detect.py --weights best.onnx --img 256 [--dnn]
    python val.py --weights best_int8_openvino_model --img 256

The file has one input 'images' (bs, 3, h, w) RGB 0-1 and one output 'output0' (bs, N, 5+nc): xywh in input
pixels, objectness and class scores, before NMS (upstream's layout), plus upstream's metadata_props 'stride' and
'names'. Dense, pruned (zeros are stored as dense zeros: no ONNX speed-up) and DNS-trained checkpoints export alike.
Needs the optional packages onnx (export) and onnxruntime (--simplify, running): pip install onnx onnxruntime;
OpenVINO needs openvino, and nncf for its INT8 form: pip install openvino nncf.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.backend import require
from models.experimental import attempt_load, prepare_model
from utils.checkpoint import CheckpointError
from utils.cli import int_at_least
from utils.compression.deep.deep_file import export_deep
from utils.compression.quant.openvino_ptq import DEFAULT_PRESET, PRESETS
from utils.compression.quant.ptq import (CALIB_METHODS, DEFAULT_CALIB_IMAGES, DEFAULT_CALIB_METHOD, CalibrationImages,
                                         int8_path, quantize_onnx)
from utils.compression.quant.ptq import PREFIX as INT8
from utils.data_yaml import check_dataset
from utils.downloads import DownloadError
from utils.general import LOGGER, ROOT, check_img_size, colorstr, set_logging
from utils.onnx_export import FORMATS, PREFIX, SUPPORTED, check_include, detect_head, export_onnx
from utils.openvino_export import PREFIX as OPENVINO
from utils.openvino_export import export_openvino
from utils.torch_utils import DeviceError, select_device

DEFAULT_WEIGHTS = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'
# flags of upstream's other formats: accepted so that upstream command lines parse, without effect here
OTHER_FORMAT_FLAGS = {'keras': False, 'optimize': False, 'verbose': False, 'workspace': 4,
                      'nms': False, 'agnostic_nms': False, 'topk_per_class': 100, 'topk_all': 100, 'iou_thres': 0.45,
                      'conf_thres': 0.25}


def default_weights() -> str:
    """The shipped shapes detector when present, else upstream's default name (downloaded on first use)."""
    return str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else 'yolov5s.pt'


def resolve_opset(opset: int | None, int8: bool) -> int:
    """The ONNX opset to export at: as given, else 12 (upstream v7.0's default), or 17 for --int8 (per-channel QDQ
    needs >= 13)."""
    return opset or (17 if int8 else 12)


def run(data: str | Path = ROOT / 'data' / 'shapes.yaml',  # --int8: calibration images from its train split
        weights: str | Path = DEFAULT_WEIGHTS,  # one .pt file
        imgsz: int | list[int] = (640, 640),  # image (height, width), pixels
        batch_size: int = 1,
        device: str = 'cpu',  # cuda device, i.e. 0 or 0,1,2,3 or cpu
        include: list[str] | tuple[str, ...] = ('onnx',),
        half: bool = False,  # FP16 export (CUDA only)
        inplace: bool = False,  # Detect inplace flag (same graph: this Detect decodes without in-place ops)
        dynamic: bool = False,  # dynamic batch, height and width axes
        simplify: bool = False,  # onnxruntime basic graph optimizations
        opset: int | None = None,  # default 12 (upstream v7.0), 17 with int8
        int8: bool = False,  # INT8: W-int8.onnx (ONNX Runtime QDQ) and/or W_int8_openvino_model/ (NNCF)
        calib_images: int = DEFAULT_CALIB_IMAGES,  # --int8: calibration images of the data's train split
        calib_method: str = DEFAULT_CALIB_METHOD,  # --int8: activation ranges by minmax, entropy or percentile
        int8_keep_fp32: list[str] | tuple[str, ...] = (),  # --int8: more Conv node names to leave in FP32
        int8_preset: str = DEFAULT_PRESET,  # --include openvino --int8: NNCF preset, mixed or performance
        **other_format_flags) -> list[str]:
    """Export ``weights`` to ``<weights>.onnx`` (--include onnx), ``<weights>_openvino_model/`` (--include openvino,
    converted from the .onnx, which is written too, as upstream does) and/or ``<weights>.deep.pt`` (--include deep:
    the entropy-coded Deep Compression form, utils/compression/deep/codec.py); returns the written file names.
    ``int8``: the INT8 forms instead: ``<weights>-int8.onnx`` (after the FP32 .onnx) and
    ``<weights>_int8_openvino_model/``.

    Raises ValueError (bad flag combination or format), CheckpointError (unreadable weights, onnx missing),
    DeviceError; ``main`` turns them into one 'ERROR: ...' line.
    """
    t = time.time()
    include = check_include(include)
    ignored = [k for k, v in other_format_flags.items() if k in OTHER_FORMAT_FLAGS and v != OTHER_FORMAT_FLAGS[k]]
    if ignored:
        LOGGER.info(f"ignoring --{' --'.join(k.replace('_', '-') for k in ignored)}: only used by formats this "
                    'project does not export')
    file = Path(weights)
    if file.suffix.lower() == '.onnx':
        raise ValueError(f'{file} is already an ONNX file: pass the .pt checkpoint it came from')
    opset = resolve_opset(opset, int8)
    if int8 and not {'onnx', 'openvino'} & set(include):
        raise ValueError('--int8 quantizes the ONNX or OpenVINO export: add --include onnx and/or openvino')
    if int8 and half:
        raise ValueError('--int8 and --half do not combine: the INT8 file is quantized from the FP32 export')
    if int8 and opset < 13 and 'onnx' in include:
        raise ValueError(f'--int8 needs --opset >= 13 (per-channel QDQ), got {opset}')
    written = []
    if 'deep' in include:  # entropy-coded checkpoint: shared weights and sparse positions Huffman-coded
        written.append(str(export_deep(weights)))
        if include == ['deep']:
            return written
    device = select_device(device)
    if half and device.type == 'cpu':
        LOGGER.info('--half is only supported on CUDA: exporting FP32')
        half = False
    if half and dynamic:
        raise ValueError('--half not compatible with --dynamic, i.e. use either --half or --dynamic but not both')
    require('onnx', 'ONNX export')  # fail before loading anything
    if 'openvino' in include:
        require('openvino', 'OpenVINO export')
        if int8:
            require('nncf', 'OpenVINO INT8 export (--include openvino --int8)')
    if int8:
        if 'onnx' in include:
            require('onnxruntime', 'INT8 export')
        calib = CalibrationImages(check_dataset(data)['train'], (0, 0), calib_images, batch_size)  # errors first

    model, _ = prepare_model(attempt_load(weights, device=device, inplace=True, fuse=False), device, half=False)
    imgsz = [int(imgsz)] * 2 if isinstance(imgsz, int) else [int(x) for x in imgsz]
    imgsz *= 2 if len(imgsz) == 1 else 1
    gs = int(max(model.stride))
    imgsz = [check_img_size(x, gs) for x in imgsz]
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    detect_head(model).inplace = inplace
    with torch.no_grad():
        for _ in range(2):
            y = model(im)[0]  # dry runs
    if half:
        im, model = im.half(), model.half()
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {file} with output shape {tuple(y.shape)} "
                f'({file.stat().st_size / 1e6:.1f} MB)')
    f = export_onnx(model, im, file.with_suffix('.onnx'), opset, dynamic, simplify)
    LOGGER.info(f'{PREFIX} export success ✅ {time.time() - t:.1f}s, saved as {f} ({f.stat().st_size / 1e6:.1f} MB)')
    written.append(str(f))
    if int8 and 'onnx' in include:
        calib.shape = tuple(imgsz)
        q = int8_path(file)
        LOGGER.info(f'{INT8} calibrating {calib_method} ranges on {len(calib.files)} images of {data} at '
                    f'{imgsz[0]}x{imgsz[1]}...')
        report = quantize_onnx(f, q, calib, calib_method, int8_keep_fp32)
        LOGGER.info(f'{INT8} export success ✅ {report}; saved as {q}')
        written.append(str(q))
    if 'openvino' in include:
        if int8:
            calib.shape, calib.skipped = tuple(imgsz), 0
            LOGGER.info(f'{OPENVINO} calibrating INT8 (NNCF) on {len(calib.files)} images of {data} at '
                        f'{imgsz[0]}x{imgsz[1]}...')
        metadata = {'stride': int(max(model.stride)), 'names': model.names}
        d, report = export_openvino(f, file, metadata, half, calib if int8 else None, int8_preset,
                                    int8_keep_fp32)
        size = sum(x.stat().st_size for x in d.iterdir()) / 1e6
        LOGGER.info(f"{OPENVINO} export success ✅{f' {report};' if report else ''} saved as {d} ({size:.1f} MB)")
        written.append(str(d))
    f = Path(written[-1])
    h = ' --half' if half else ''
    LOGGER.info(f"\nExport complete ({time.time() - t:.1f}s)\nResults saved to {colorstr('bold', f.parent)}"
                f'\nDetect:          python detect.py --weights {f}{h}'
                f'\nValidate:        python val.py --weights {f}{h}'
                f'\nVisualize:       https://netron.app')
    return written


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (upstream v7.0 names); ``argv`` None reads sys.argv."""
    parser = argparse.ArgumentParser(description='Export a YOLOv5 model to ONNX or OpenVINO')
    parser.add_argument('--data', type=str, default=str(ROOT / 'data' / 'shapes.yaml'),
                        help='dataset.yaml path (--int8: calibration images from its train split)')
    parser.add_argument('--weights', nargs='+', type=str, default=[default_weights()], help='model.pt path(s)')
    parser.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int_at_least(1), default=[640, 640],
                        help='image (h, w)')
    parser.add_argument('--batch-size', type=int_at_least(1), default=1, help='batch size')
    parser.add_argument('--device', default='cpu', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    parser.add_argument('--half', action='store_true', help='FP16 half-precision export (CUDA only)')
    parser.add_argument('--inplace', action='store_true', help='set YOLOv5 Detect() inplace=True (same graph here)')
    parser.add_argument('--keras', action='store_true', help='TF: use Keras (format not supported, ignored)')
    parser.add_argument('--optimize', action='store_true',
                        help='TorchScript: optimize for mobile (format not supported, ignored)')
    parser.add_argument('--int8', action='store_true',
                        help='INT8 by static post-training quantization, activations calibrated on --data train '
                             'images, the box decode and the Detect output convs kept FP32. ONNX: also write '
                             'W-int8.onnx (ONNX Runtime QDQ, per-channel symmetric weights); OpenVINO: write '
                             'W_int8_openvino_model/ (NNCF, needs pip install nncf)')
    parser.add_argument('--calib-images', type=int_at_least(1), default=DEFAULT_CALIB_IMAGES,
                        help='--int8: calibration images, spread over the train split of --data')
    parser.add_argument('--calib-method', choices=CALIB_METHODS, default=DEFAULT_CALIB_METHOD,
                        help='--int8: activation ranges from the min/max, entropy or a percentile of the calibration '
                             'activations')
    parser.add_argument('--int8-keep-fp32', nargs='+', default=[], metavar='NODE',
                        help="--int8: more Conv nodes to leave in FP32, by ONNX name (e.g. '/model/model.0/conv/Conv')")
    parser.add_argument('--int8-preset', choices=PRESETS, default=DEFAULT_PRESET,
                        help='--include openvino --int8: NNCF preset, mixed (asymmetric activations, the more accurate) '
                             'or performance (symmetric activations, faster on some CPUs)')
    parser.add_argument('--dynamic', action='store_true', help='ONNX: dynamic axes (batch, height, width)')
    parser.add_argument('--simplify', action='store_true',
                        help='ONNX: simplify model (onnxruntime constant folding and redundant-node elimination)')
    parser.add_argument('--opset', type=int_at_least(7), default=None,
                        help='ONNX: opset version (default 12; 17 with --int8)')
    parser.add_argument('--verbose', action='store_true', help='TensorRT: verbose log (not supported, ignored)')
    parser.add_argument('--workspace', type=int, default=4, help='TensorRT: workspace size (GB) (ignored)')
    parser.add_argument('--nms', action='store_true', help='TF: add NMS to model (not supported, ignored)')
    parser.add_argument('--agnostic-nms', action='store_true', help='TF: add agnostic NMS to model (ignored)')
    parser.add_argument('--topk-per-class', type=int, default=100, help='TF.js NMS: topk per class to keep (ignored)')
    parser.add_argument('--topk-all', type=int, default=100, help='TF.js NMS: topk for all classes to keep (ignored)')
    parser.add_argument('--iou-thres', type=float, default=0.45, help='TF.js NMS: IoU threshold (ignored)')
    parser.add_argument('--conf-thres', type=float, default=0.25, help='TF.js NMS: confidence threshold (ignored)')
    parser.add_argument('--include', nargs='+', default=['onnx'],
                        help=f"format(s): onnx, openvino (W_openvino_model/, from the ONNX file), deep (entropy-coded "
                             f"Deep Compression checkpoint W.deep.pt); upstream's others, {', '.join(f for f in FORMATS if f not in SUPPORTED)}, are not supported")
    opt = parser.parse_args(argv)
    if len(opt.imgsz) > 2:
        parser.error(f'--imgsz takes 1 or 2 values (size, or height width), got {len(opt.imgsz)}')
    return opt


def main(opt: argparse.Namespace) -> list[str]:
    """Export every --weights file; user errors end the program with one 'ERROR: ...' line."""
    set_logging()
    LOGGER.info(colorstr('export: ') + ', '.join(f'{k}={v}' for k, v in vars(opt).items()))
    files = []
    try:
        for w in opt.weights:
            files += run(**{**vars(opt), 'weights': w})
    except (CheckpointError, DeviceError, DownloadError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}') from None
    return files


if __name__ == '__main__':
    main(parse_opt())
