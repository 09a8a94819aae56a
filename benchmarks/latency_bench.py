"""Inference latency of dense vs pruned YOLOv5 models, measured in one run (ratios are the result).

Usage:
    python benchmarks/latency_bench.py                                  # yolov5n + yolov5s, CPU, 1x640 and 32x256
    python benchmarks/latency_bench.py --cfgs yolov5s.yaml --flops 0.5 --shapes 1x640
    python benchmarks/latency_bench.py --weights data/weights/yolov5n-shapes.pt runs/train/exp/weights/best.pt
    python benchmarks/latency_bench.py --device 0 --half                  # CUDA FP16 (benchmarks/gpu_check.py)

Variants of each model (random init from --cfgs, or the first of --weights as the dense model):
- dense: the model as built/loaded;
- weight 50 %: unstructured magnitude pruning (zeros in dense tensors: no faster, shown as the control);
- channel l1 / channel l1 r8: `prune_channels` at the channel fraction that leaves --flops of the FLOPs
  (`amount_for_flops`), kept counts as they fall / rounded up to multiples of 8;
- every further --weights file as it is (e.g. a channel-DNS best.pt), compared with the first.
With --onnx each variant is also exported to ONNX and run with ONNX Runtime (CPU), when onnxruntime is installed.

All models are fused, in eval mode, run under torch.inference_mode with torch's default thread count (printed).
Timing: after warm-up, --repeats rounds; each round times every variant once, in rotating order, so background load
hits all of them alike; the fastest run per variant is reported in ms per image (other jobs only ever add time),
with its speed-up over dense. The 'weight 50%' row is the control: same dense compute, so its ratio shows the noise.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def variants(model: nn.Module, flops: float, imgsz: int) -> dict[str, nn.Module]:
    """Dense, 50 % unstructured and channel-pruned (l1 at ``flops`` of the FLOPs, plain and rounded to 8) copies."""
    from utils.channel_pruning import amount_for_flops, prune_channels
    from utils.sparsity import prune

    out = {'dense': copy.deepcopy(model)}
    out['weight 50%'] = copy.deepcopy(model)
    prune(out['weight 50%'], 0.5)
    for name, r in (('channel l1', 1), ('channel l1 r8', 8)):
        amount = amount_for_flops(model, flops, round_to=r, imgsz=imgsz)
        out[name] = copy.deepcopy(model)
        prune_channels(out[name], amount, round_to=r)
    return out


def torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A call running ``model(x)`` under inference mode (what `measure` times)."""
    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def ort_cpu_session(file: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for timing (``threads`` intra-op threads, or its default), with idle-thread
    spinning off: ONNX Runtime's idle intra-op threads spin by default, and interleaved with other timed runs
    (PyTorch, other sessions) they take the cores and slow whatever runs next (measured: the dense torch row 1.3x
    slower, the same-compute control reading 1.55x)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(str(file), so, providers=['CPUExecutionProvider'])


def _onnx_runner(model: nn.Module, x: torch.Tensor, tmp: Path, name: str) -> Callable[[], None] | None:
    """ONNX Runtime (CPU) session of ``model`` exported at x's shape, or None without onnx/onnxruntime."""
    try:
        import onnxruntime  # noqa: F401  (only whether it is installed: ort_cpu_session imports it)

        from utils.export import export_onnx
    except ImportError:
        return None
    f = tmp / f"{name.replace(' ', '_').replace('%', '')}.onnx"
    export_onnx(copy.deepcopy(model).float().cpu(), x.float().cpu(), f)
    session = ort_cpu_session(f)
    feed = {session.get_inputs()[0].name: x.float().cpu().numpy()}
    return lambda: session.run(None, feed)


def timings(runners: dict[str, Callable[[], None]], device: torch.device, repeats: int,
            warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of every call of each runner, after ``warmup`` untimed calls each, interleaved over ``repeats`` rounds
    in rotating order (machine load then affects every runner alike)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    _sync(device)
    names, times = list(runners), {n: [] for n in runners}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runners[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t)
    return times


def measure(runners: dict[str, Callable[[], None]], device: torch.device, repeats: int,
            warmup: int = 2, stat: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Seconds per call of each runner: ``stat`` of its `timings` (median, or min = the fastest run, the better
    estimate of a model's own cost when other jobs share the CPU, since they only add time)."""
    return {n: stat(v) for n, v in timings(runners, device, repeats, warmup).items()}


def run(cfgs: list[str] | None = None, weights: list[str] | None = None, flops: float = 0.5,
        shapes: list[tuple[int, int]] = ((1, 640), (32, 256)), device: str = 'cpu', half: bool = False,
        repeats: int = 10, onnx: bool = False) -> list[dict]:
    """Print one table per model and shape; returns rows {model, variant, backend, batch, imgsz, ms, speedup, ...}."""
    import tempfile

    from models.experimental import attempt_load
    from models.yolo import DetectionModel
    from utils.torch_utils import model_flops, select_device

    dev = select_device(device)
    half &= dev.type == 'cuda'
    models: dict[str, dict[str, nn.Module]] = {}
    if weights:
        dense = attempt_load(weights[0], fuse=False)
        models[Path(weights[0]).stem] = {**variants(dense, flops, 640),
                                        **{Path(w).stem: attempt_load(w, fuse=False) for w in weights[1:]}}
    for cfg in cfgs or []:
        torch.manual_seed(0)
        models[Path(cfg).stem] = variants(DetectionModel(cfg).eval(), flops, 640)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, '
          f"{'FP16' if half else 'FP32'}, {repeats} interleaved repeats, fastest run")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, group in models.items():
            info = {}
            for name, m in group.items():
                m.fuse().eval()
                info[name] = (sum(p.numel() for p in m.parameters()), model_flops(m, 640))
                group[name] = (m.half() if half else m.float()).to(dev)
            for batch, imgsz in shapes:
                x = torch.zeros(batch, 3, imgsz, imgsz, device=dev, dtype=torch.half if half else torch.float)
                runners = {(n, 'torch'): torch_runner(m, x) for n, m in group.items()}
                if onnx:
                    for n, m in group.items():
                        r = _onnx_runner(m, x, Path(tmp), f'{model_name}-{n}-{batch}x{imgsz}')
                        if r is None:
                            print('onnx/onnxruntime not installed: pip install onnx onnxruntime')
                            break
                        runners[(n, 'onnxruntime')] = r
                t = measure(runners, dev, repeats, stat=min)
                print(f"\n{model_name}, batch {batch} at {imgsz} px\n{'variant':<22}{'backend':<13}{'params':>11}"
                      f"{'GFLOPs@640':>11}{'ms/img':>10}{'speed-up':>10}")
                for (n, backend), s in t.items():
                    base = t[('dense', backend)]
                    row = {'model': model_name, 'variant': n, 'backend': backend, 'batch': batch, 'imgsz': imgsz,
                           'params': info[n][0], 'gflops': info[n][1], 'ms': s * 1e3 / batch, 'speedup': base / s}
                    rows.append(row)
                    print(f"{n:<22}{backend:<13}{row['params']:>11,}{row['gflops']:>11.2f}{row['ms']:>10.2f}"
                          f"{row['speedup']:>9.2f}x", flush=True)
    return rows


def _shape(s: str) -> tuple[int, int]:
    b, _, i = s.partition('x')
    return int(b), int(i)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfgs', nargs='*', default=None, help='model YAMLs (random init); default yolov5n + yolov5s '
                                                            'unless --weights is given')
    p.add_argument('--weights', nargs='*', default=None, help='dense .pt, then pruned .pt files to compare with it')
    p.add_argument('--flops', type=float, default=0.5, help='channel-pruned variants keep this fraction of FLOPs')
    p.add_argument('--shapes', nargs='+', type=_shape, default=[(1, 640), (32, 256)], help='BATCHxSIZE, e.g. 1x640')
    p.add_argument('--device', default='cpu', help='cpu or a CUDA index')
    p.add_argument('--half', action='store_true', help='FP16 (CUDA only)')
    p.add_argument('--repeats', type=int, default=10, help='interleaved timing rounds')
    p.add_argument('--onnx', action='store_true', help='also time ONNX Runtime (CPU) on each variant')
    opt = p.parse_args()
    if opt.cfgs is None and not opt.weights:
        opt.cfgs = ['yolov5n.yaml', 'yolov5s.yaml']
    from utils.general import set_logging
    set_logging(verbose=False)
    run(opt.cfgs, opt.weights, opt.flops, opt.shapes, opt.device, opt.half, opt.repeats, opt.onnx)


if __name__ == '__main__':
    main()
