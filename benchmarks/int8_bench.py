"""The deployment ladder's latency in one run: dense and channel-pruned YOLOv5, FP32 and INT8, in ONNX Runtime (CPU),
next to dense FP32 in PyTorch (what a user runs today).

Usage:
    python benchmarks/int8_bench.py                                   # yolov5n + yolov5s, 1x640 and 32x256
    python benchmarks/int8_bench.py --cfgs yolov5s.yaml --shapes 1x640 --repeats 10
    python benchmarks/int8_bench.py --weights data/weights/yolov5n-shapes.pt runs/train/r16/weights/best.pt

Variants per model (random init from --cfgs, or the first of --weights as the dense model and the others as they
are): dense; channel-pruned to --flops (default half and a third of the FLOPs), global scope, kept widths rounded up
to the device's kernel width (16 on AVX-512 CPUs), as benchmarks/latency_bench.py's 'channel rN'. Each variant is
exported at the shape (fixed batch and size, opset 17) and quantized like `export.py --int8` (calibrated on
--calib-images images of the embedded set: timing does not depend on the ranges). Timing: latency_bench.timings
(interleaved rounds, fastest run), ONNX Runtime sessions with its default thread count and spinning off.
Ratios: each row against dense FP32 in ONNX Runtime and against dense FP32 in PyTorch, measured in the same run.
With --openvino (optional packages openvino, nncf) every file also runs in OpenVINO (LATENCY hint): in FP32 (precision
hint f32), with OpenVINO's default precision (bf16 on CPUs with AMX/AVX512-BF16: what a user gets without asking),
and as `export.py --include openvino --int8` writes it (NNCF, preset mixed; with --ov-presets also others): the
strongest dense CPU runtime a user could pick instead, and its INT8 path.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.latency_bench import keep_freed_memory, ort_cpu_session, timings, torch_runner  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.compression.channel.pruning import (DEFAULT_IMPORTANCE, amount_for_flops, channel_multiple,  # noqa: E402
                                               prune_channels)
from utils.comparison import unique_stems  # noqa: E402
from utils.compression.quant.ptq import CalibrationImages, quantize_onnx  # noqa: E402
from utils.data_yaml import check_dataset  # noqa: E402
from utils.onnx_export import export_onnx  # noqa: E402
from utils.openvino_export import export_openvino  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402


def ladder(model: nn.Module, flops: list[float], round_to: int) -> dict[str, nn.Module]:
    """Dense and channel-pruned copies (global scope, widths rounded to ``round_to``) at each FLOPs fraction."""
    out = {'dense': copy.deepcopy(model)}
    for f in flops:
        amount = amount_for_flops(model, f, 'global', DEFAULT_IMPORTANCE, round_to=round_to)
        m = copy.deepcopy(model)
        prune_channels(m, amount, 'global', DEFAULT_IMPORTANCE, round_to=round_to)
        out[f'channel {f:.2f} r{round_to}'] = m
    return out


def openvino_runner(file: Path, feed: dict, precision: str = 'f32'):
    """A call running ``file`` in OpenVINO on the CPU (LATENCY hint) with inference precision ``precision``: 'f32', or
    OpenVINO's own default ('' : bf16 on CPUs with AMX/AVX512-BF16, f32 elsewhere). Needs the optional openvino
    package (run() checks that it is installed)."""
    import openvino as ov

    config = {'PERFORMANCE_HINT': 'LATENCY', **({'INFERENCE_PRECISION_HINT': precision} if precision else {})}
    compiled = ov.Core().compile_model(str(file), 'CPU', config)
    request = compiled.create_infer_request()
    return lambda: request.infer(feed)


def openvino_available() -> bool:
    """True when the optional packages of the OpenVINO rows (openvino, nncf) are installed."""
    return all(importlib.util.find_spec(m) for m in ('openvino', 'nncf'))


def openvino_default() -> str:
    """OpenVINO's default CPU inference precision as a label: 'BF16' on CPUs with AMX/AVX512-BF16, else 'FP32'."""
    import openvino as ov

    t = ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT').get_type_name()  # an ov.Type: bf16, f32, ...
    return {'bf16': 'BF16', 'f32': 'FP32', 'f16': 'FP16'}.get(t, t)


def parse_shape(s: str) -> tuple[int, int]:
    b, _, n = s.partition('x')
    return int(b), int(n)


def run(cfgs: list[str] | None, weights: list[str] | None, flops: list[float], shapes: list[tuple[int, int]],
        repeats: int, calib_images: int, names: list[str] | None = None, openvino: bool = False,
        ov_presets: tuple[str, ...] = ('mixed',)) -> list[dict]:
    """Print one table per model and shape; returns rows {model, variant, precision, batch, imgsz, ms, ...}.

    ``names``: the variant names of weights[1:] (default: their run-folder names, utils.comparison.unique_stems).
    ``openvino``: also time every file in OpenVINO (FP32, its default precision, and NNCF INT8 at each of
    ``ov_presets``).
    """
    kept = keep_freed_memory()
    width = channel_multiple('cpu')
    models: dict[str, dict[str, nn.Module]] = {}
    if weights:
        dense = attempt_load(weights[0], fuse=False)
        names = names or unique_stems([Path(w) for w in weights])[1:]
        models[Path(weights[0]).stem] = {**ladder(dense, flops, width),
                                         **{n: attempt_load(w, fuse=False) for n, w in zip(names, weights[1:])}}
    for cfg in cfgs or []:
        torch.manual_seed(0)
        models[Path(cfg).stem] = ladder(DetectionModel(cfg).eval(), flops, width)
    import onnxruntime as ort

    if openvino and not openvino_available():
        print('openvino / nncf not installed (pip install openvino nncf): no OpenVINO rows')
        openvino = False
    ov_default = ''
    if openvino:
        import openvino as ov

        ov_default = openvino_default()
        print(f"OpenVINO {ov.__version__}: FP32 rows with INFERENCE_PRECISION_HINT f32; its default on this CPU is "
              f"{ov_default} ('{ov_default} OpenVINO' rows); INT8 rows: NNCF preset {', '.join(ov_presets)}")

    train = check_dataset(ROOT / 'data' / 'shapes.yaml')['train']
    print(f'torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__} (default '
          f'intra-op threads), CPU {torch.backends.cpu.get_cpu_capability()}, kernel width {width}; {repeats} '
          f"interleaved repeats, fastest run{', freed memory kept in the process' if kept else ''}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, group in models.items():
            for m in group.values():
                m.fuse().eval().float()
            for batch, imgsz in shapes:
                x = torch.zeros(batch, 3, imgsz, imgsz)
                runners, info = {('dense', 'FP32 torch'): torch_runner(group['dense'], x)}, {}
                for name, m in group.items():
                    f = Path(tmp) / f"{model_name}-{name.replace(' ', '_')}-{batch}x{imgsz}.onnx"
                    export_onnx(copy.deepcopy(m), x, f, opset=17)
                    q = f.with_name(f.stem + '-int8.onnx')
                    quantize_onnx(f, q, CalibrationImages(train, (imgsz, imgsz), calib_images, batch))
                    feed = {'images': x.numpy()}
                    for precision, file in (('FP32 ORT', f), ('INT8 ORT', q)):
                        session = ort_cpu_session(file)
                        runners[(name, precision)] = lambda s=session: s.run(None, feed)
                    ov_rows = [('FP32 OpenVINO', f, 'f32')] + [(f'{ov_default} OpenVINO', f, '')] * (ov_default != 'FP32')
                    for preset in ov_presets if openvino else ():
                        calib = CalibrationImages(train, (imgsz, imgsz), calib_images, batch)
                        d, _ = export_openvino(f, f.with_name(f'{f.stem}-{preset}.pt'), {'stride': 32, 'names': {}},
                                               calib=calib, preset=preset)
                        ov_rows.append(('INT8 OpenVINO' + (f' {preset}' if len(ov_presets) > 1 else ''),
                                        next(d.glob('*.xml')), ''))
                    for precision, file, hint in ov_rows if openvino else ():
                        runners[(name, precision)] = openvino_runner(file, feed, hint)
                    info[name] = (sum(p.numel() for p in m.parameters()), model_flops(m, 640))
                t = {k: min(v) for k, v in timings(runners, torch.device('cpu'), repeats).items()}
                base_ort, base_torch = t[('dense', 'FP32 ORT')], t[('dense', 'FP32 torch')]
                print(f"\n{model_name}, batch {batch} at {imgsz} px\n{'variant':<24}{'runtime':<26}{'params':>11}"
                      f"{'GFLOPs@640':>11}{'ms/img':>10}{'vs FP32 ORT':>13}{'vs FP32 torch':>15}")
                for (name, precision), s in t.items():
                    row = {'model': model_name, 'variant': name, 'precision': precision, 'batch': batch,
                           'imgsz': imgsz, 'params': info[name][0], 'gflops': info[name][1], 'ms': s * 1e3 / batch,
                           'vs_ort': base_ort / s, 'vs_torch': base_torch / s}
                    rows.append(row)
                    print(f"{name:<24}{precision:<26}{row['params']:>11,}{row['gflops']:>11.2f}{row['ms']:>10.2f}"
                          f"{row['vs_ort']:>12.2f}x{row['vs_torch']:>14.2f}x", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfgs', nargs='*', default=None, help='model YAMLs (random init); default yolov5n + yolov5s')
    p.add_argument('--weights', nargs='*', default=None, help='dense .pt, then pruned .pt files to compare with it')
    p.add_argument('--flops', nargs='*', type=float, default=[0.5, 0.33], help='FLOPs fractions of the pruned rows')
    p.add_argument('--shapes', nargs='+', type=parse_shape, default=[(1, 640), (32, 256)], help='BATCHxSIZE')
    p.add_argument('--repeats', type=int, default=10, help='interleaved timing rounds')
    p.add_argument('--calib-images', type=int, default=32, help='calibration images per INT8 file')
    p.add_argument('--openvino', action='store_true',
                   help='also time OpenVINO (optional packages: pip install openvino nncf)')
    p.add_argument('--ov-presets', nargs='+', default=['mixed'], choices=['mixed', 'performance'],
                   help='NNCF presets of the INT8 OpenVINO rows')
    opt = p.parse_args()
    if not opt.weights and opt.cfgs is None:
        opt.cfgs = ['yolov5n.yaml', 'yolov5s.yaml']
    run(opt.cfgs, opt.weights, opt.flops, opt.shapes, opt.repeats, opt.calib_images, openvino=opt.openvino,
        ov_presets=tuple(opt.ov_presets))


if __name__ == '__main__':
    main()
