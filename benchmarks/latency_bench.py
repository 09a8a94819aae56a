"""Inference latency of dense vs pruned YOLOv5 models, measured in one run (ratios are the result).

Usage:
    python benchmarks/latency_bench.py                                  # yolov5n + yolov5s, CPU, 1x640 and 32x256
    python benchmarks/latency_bench.py --cfgs yolov5s.yaml --flops 0.5 --shapes 1x640 --channels-last
    python benchmarks/latency_bench.py --weights data/weights/yolov5n-shapes.pt runs/train/exp/weights/best.pt
    python benchmarks/latency_bench.py --device 0 --half                  # CUDA FP16 (benchmarks/gpu_check.py)
    python benchmarks/latency_bench.py --cfgs yolov5n.yaml --shapes 1x640 --per-layer   # where the time goes

Variants of each model (random init from --cfgs, or the first of --weights as the dense model):
- dense: the model as built/loaded;
- weight 50 %: unstructured magnitude pruning (zeros in dense tensors: no faster, shown as the control);
- channel: `prune_channels` (layer scope, default importance) at the channel fraction that leaves --flops of the
  FLOPs (`amount_for_flops`), kept counts as they fall;
- channel rN: the same FLOPs with kept counts rounded up to N = the device's kernel width
  (`channel_multiple`: 16 on AVX-512 CPUs, 8 on other CPUs and CUDA), global scope (per-layer rounding to 16 of
  narrow layers jumps past the FLOPs target);
- every further --weights file as it is (e.g. a channel-DNS best.pt), compared with the first.
Backends: PyTorch (NCHW), with --channels-last also PyTorch in channels-last memory format (NHWC: oneDNN then
skips the per-layer layout conversions), with --onnx also ONNX Runtime (CPU), when onnxruntime is installed.
Speed-ups compare with the dense model on the same backend.

All models are fused, in eval mode, run under torch.inference_mode with torch's default thread count (printed).
Timing: after warm-up, --repeats rounds; each round times every variant once, in a random order, so background load
hits all of them alike; the fastest run per variant is reported in ms per image (other jobs only ever add time),
with its speed-up over dense. Each round also gives a paired ratio (dense and the variant timed in the same round,
moments apart): the median and quartiles of these show how much a ratio moves with the machine's state. The
'weight 50%' row is the control: same dense compute, so its ratio shows the noise.
On glibc, freed memory is kept in the process (`keep_freed_memory`, off with --no-keep-memory): by default glibc
hands large freed blocks (the activations) back to the kernel and the next forward faults their pages in again, a
cost that drifts with the machine's memory state (measured, yolov5n 1x640 dense / r16: 61.4 / 48.0 ms without,
49.7 / 35.9 ms with; another pair of runs showed no difference).
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


def variants(model: nn.Module, flops: float, imgsz: int, round_to: int = 16) -> dict[str, nn.Module]:
    """Dense, 50 % unstructured and channel-pruned copies at ``flops`` of the FLOPs: layer scope with kept counts as
    they fall, and global scope with kept counts rounded up to ``round_to`` (named 'channel' and
    f'channel r{round_to}')."""
    from utils.compression.channel.pruning import DEFAULT_IMPORTANCE, amount_for_flops, prune_channels
    from utils.compression.weight.magnitude import prune

    out = {'dense': copy.deepcopy(model)}
    out['weight 50%'] = copy.deepcopy(model)
    prune(out['weight 50%'], 0.5)
    for name, scope, r in (('channel', 'layer', 1), (f'channel r{round_to}', 'global', round_to)):
        amount = amount_for_flops(model, flops, scope, DEFAULT_IMPORTANCE, round_to=r, imgsz=imgsz)
        out[name] = copy.deepcopy(model)
        prune_channels(out[name], amount, scope, DEFAULT_IMPORTANCE, round_to=r)
    return out


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process (no mmap for large blocks, no trimming), as jemalloc/tcmalloc
    do (the allocators Intel's PyTorch CPU tuning guide recommends): every forward then reuses the pages of the last
    one instead of faulting in fresh ones. Returns whether it took effect (False off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


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

        from utils.onnx_export import export_onnx
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
    in a new random order each round (seeded): machine load then affects every runner alike, and no runner always
    follows the same other one (what runs just before, e.g. a model that evicts the caches, changes a run's time)."""
    import random

    for run in runners.values():
        for _ in range(warmup):
            run()
    _sync(device)
    names, times, rng = list(runners), {n: [] for n in runners}, random.Random(0)
    for _ in range(repeats):
        for n in rng.sample(names, len(names)):
            t = time.perf_counter()
            runners[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t)
    return times


def paired_speedups(dense: list[float], variant: list[float]) -> tuple[float, float, float]:
    """Speed-up of a variant over dense per timing round (both were timed in the same round, so each ratio is a
    paired measurement): median, first and third quartile. One round gives its ratio three times."""
    ratios = [d / v for d, v in zip(dense, variant)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, med, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return med, q1, q3


def measure(runners: dict[str, Callable[[], None]], device: torch.device, repeats: int,
            warmup: int = 2, stat: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Seconds per call of each runner: ``stat`` of its `timings` (median, or min = the fastest run, the better
    estimate of a model's own cost when other jobs share the CPU, since they only add time)."""
    return {n: stat(v) for n, v in timings(runners, device, repeats, warmup).items()}


def run(cfgs: list[str] | None = None, weights: list[str] | None = None, flops: float = 0.5,
        shapes: list[tuple[int, int]] = ((1, 640), (32, 256)), device: str = 'cpu', half: bool = False,
        repeats: int = 10, onnx: bool = False, channels_last: bool = False, keep_memory: bool = True,
        per_layer: bool = False) -> list[dict]:
    """Print one table per model and shape; returns rows {model, variant, backend, batch, imgsz, ms, speedup, ...}."""
    import tempfile

    from models.experimental import attempt_load
    from models.yolo import DetectionModel
    from utils.compression.channel.pruning import channel_multiple
    from utils.torch_utils import model_flops, select_device

    dev = select_device(device)
    half &= dev.type == 'cuda'
    kept = keep_memory and dev.type == 'cpu' and keep_freed_memory()
    width = channel_multiple(dev)
    models: dict[str, dict[str, nn.Module]] = {}
    if weights:
        from utils.comparison import unique_stems

        names = unique_stems([Path(w) for w in weights])  # two runs' last.pt get their run folders' names
        dense = attempt_load(weights[0], fuse=False)
        models[names[0]] = {**variants(dense, flops, 640, width),
                            **{n: attempt_load(w, fuse=False) for n, w in zip(names[1:], weights[1:])}}
    for cfg in cfgs or []:
        torch.manual_seed(0)
        models[Path(cfg).stem] = variants(DetectionModel(cfg).eval(), flops, 640, width)
    kind = torch.backends.cpu.get_cpu_capability() if dev.type == 'cpu' else 'CUDA'
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev} '
          f'({kind}: kernel width {width} channels), '
          f"{'FP16' if half else 'FP32'}, {repeats} interleaved repeats, fastest run"
          f"{', freed memory kept in the process' if kept else ''}")
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
                if channels_last:
                    xc = x.contiguous(memory_format=torch.channels_last)
                    for n, m in group.items():
                        mc = copy.deepcopy(m).to(memory_format=torch.channels_last)
                        runners[(n, 'torch NHWC')] = torch_runner(mc, xc)
                if onnx:
                    for n, m in group.items():
                        r = _onnx_runner(m, x, Path(tmp), f'{model_name}-{n}-{batch}x{imgsz}')
                        if r is None:
                            print('onnx/onnxruntime not installed: pip install onnx onnxruntime')
                            break
                        runners[(n, 'onnxruntime')] = r
                runs = timings(runners, dev, repeats)
                t = {k: min(v) for k, v in runs.items()}
                print(f"\n{model_name}, batch {batch} at {imgsz} px\n{'variant':<22}{'backend':<13}{'params':>11}"
                      f"{'GFLOPs@640':>11}{'ms/img':>10}{'speed-up':>10}   per round: median [quartiles]")
                for (n, backend), s in t.items():
                    base = t[('dense', backend)]
                    med, q1, q3 = paired_speedups(runs[('dense', backend)], runs[(n, backend)])
                    row = {'model': model_name, 'variant': n, 'backend': backend, 'batch': batch, 'imgsz': imgsz,
                           'params': info[n][0], 'gflops': info[n][1], 'ms': s * 1e3 / batch, 'speedup': base / s,
                           'round_median': med, 'round_q1': q1, 'round_q3': q3}
                    rows.append(row)
                    print(f"{n:<22}{backend:<13}{row['params']:>11,}{row['gflops']:>11.2f}{row['ms']:>10.2f}"
                          f"{row['speedup']:>9.2f}x   {med:.2f}x [{q1:.2f}, {q3:.2f}]", flush=True)
                if per_layer:
                    print(per_layer_table(group, x, repeats), flush=True)
    return rows


def per_layer_table(models: dict[str, nn.Module], x: torch.Tensor, runs: int) -> str:
    """Time of every layer (PyTorch, the input's memory format) of each model on x: fastest of ``runs`` calls on the
    input the layer gets in a forward (`BaseModel.profile_layers`), with each variant's ratio to dense per layer:
    where a pruned model saves time and where it cannot (layers that keep their width)."""
    with torch.inference_mode():
        prof = {n: m.profile_layers(x, runs) for n, m in models.items()}
    names = [n for n in models if n != 'dense']
    lines = [f"{'layer':>5}  {'module':<16}{'dense ms':>9}" + ''.join(f'{n[:15]:>22}' for n in names)]
    for i, d in enumerate(prof['dense']):
        cells = ''.join(f'{prof[n][i].ms:>13.2f} ({d.ms / prof[n][i].ms:>4.2f}x)' for n in names)
        lines.append(f'{d.index:>5}  {d.module.rsplit(".", 1)[-1]:<16}{d.ms:>9.2f}{cells}')
    total = {n: sum(r.ms for r in rows) for n, rows in prof.items()}
    lines.append(f"{'':>5}  {'sum':<16}{total['dense']:>9.2f}"
                 + ''.join(f"{total[n]:>13.2f} ({total['dense'] / total[n]:>4.2f}x)" for n in names))
    return '\n'.join(lines)


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
    p.add_argument('--channels-last', action='store_true', help='also time PyTorch in channels-last (NHWC) format')
    p.add_argument('--per-layer', action='store_true',
                   help='also time every layer of each PyTorch (NCHW) variant (fastest of --repeats calls)')
    p.add_argument('--no-keep-memory', action='store_true',
                   help="leave glibc's default of returning large freed blocks to the kernel (page faults each run)")
    opt = p.parse_args()
    if opt.cfgs is None and not opt.weights:
        opt.cfgs = ['yolov5n.yaml', 'yolov5s.yaml']
    from utils.general import set_logging
    set_logging(verbose=False)
    run(opt.cfgs, opt.weights, opt.flops, opt.shapes, opt.device, opt.half, opt.repeats, opt.onnx, opt.channels_last,
        not opt.no_keep_memory, opt.per_layer)


if __name__ == '__main__':
    main()
