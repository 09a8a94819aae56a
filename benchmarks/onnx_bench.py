"""ONNX Runtime CPU latency of exported models: dense vs unstructured-sparse (and any other .pt, e.g. channel-pruned).

Usage: python benchmarks/onnx_bench.py [--weights dense.pt pruned.pt ...] [--prune 0.5 0.9] [--shapes 1x640 32x256]
                                       [--threads 2] [--runs 20] [--warmup 3]

Each --weights file is exported like ``export.py`` (fixed shape per batch x image size, FP32, opset 12) to a temp
folder; the first file is also pruned to each --prune amount (global magnitude, val.py --prune's cut) and exported:
unstructured zeros stay dense tensors in ONNX, so they should not change the latency. Every model gets an ONNX
Runtime CPU session (default graph optimizations, --threads intra-op threads). Timed runs are interleaved round-robin
over the models (one run of each per round) so that load on a shared machine hits all alike; printed: the fastest
and the median ms per batch, ms per image (fastest) and the ratio of the fastest times to the first model's at the
same shape, all from one run. The fastest run is the better estimate of a model's own cost when other jobs share the
CPU (they only ever add time); the median shows how much they added.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'


def parse_shape(s: str) -> tuple[int, int]:
    """'1x640' -> (batch 1, 640 px)."""
    try:
        b, n = (int(x) for x in s.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not BATCHxIMGSZ, e.g. 1x640") from None
    if b < 1 or n < 32:
        raise argparse.ArgumentTypeError(f"'{s}': batch must be >= 1 and image size >= 32")
    return b, n


def run(weights: list[str] | None = None, prune: list[float] | None = (0.5, 0.9),
        shapes: list[tuple[int, int]] = ((1, 640),), threads: int = 2, runs: int = 20, warmup: int = 3) -> list[dict]:
    """Export, time and print; returns one row per (model, shape): {model, sparsity, shape, ms (fastest run),
    ms_median, ms_img, ratio (of the fastest runs)}."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from benchmarks.latency_bench import ort_cpu_session, timings
    from models.experimental import attempt_load, prepare_model
    from utils.compression.weight.magnitude import prune as prune_weights
    from utils.general import LOGGER
    from utils.onnx_export import export_onnx

    weights = [str(w) for w in (weights or [SHIPPED])]
    level = LOGGER.level
    LOGGER.setLevel('WARNING')  # keep export and fusing logs out of the benchmark output
    sessions = {}  # (label, shape) -> session
    sparsity = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            variants = [(Path(w).stem, w, 0.0) for w in weights]
            variants += [(f'{Path(weights[0]).stem} {a:.0%} unstructured', weights[0], a) for a in (prune or [])]
            for k, (label, w, amount) in enumerate(variants):
                for b, n in shapes:
                    model = attempt_load(w, fuse=False)
                    if amount:
                        prune_weights(model, amount, 'global')
                    model, report = prepare_model(model, 'cpu')
                    sparsity[label] = report.prunable
                    f = Path(tmp) / f'm{k}_{b}x{n}.onnx'
                    export_onnx(model, torch.zeros(b, 3, n, n), f)
                    sessions[label, (b, n)] = ort_cpu_session(f, threads)
    finally:
        LOGGER.setLevel(level)

    rows = []
    for b, n in shapes:
        x = np.random.default_rng(0).random((b, 3, n, n), dtype=np.float32)
        group = {label: functools.partial(s.run, None, {'images': x})
                 for (label, shape), s in sessions.items() if shape == (b, n)}
        times = timings(group, torch.device('cpu'), runs, warmup)  # interleaved: load affects every model alike
        ref = None
        for label, ts in times.items():
            ms = min(ts) * 1e3
            ref = ref or ms
            rows.append({'model': label, 'sparsity': sparsity[label], 'shape': (b, n), 'ms': ms,
                         'ms_median': statistics.median(ts) * 1e3, 'ms_img': ms / b, 'ratio': ms / ref})

    print(f'ONNX Runtime {ort.__version__} CPU ({threads} threads), FP32, fixed-shape exports (opset 12); '
          f'{runs} interleaved runs after {warmup} warm-up')
    print('| model | zeros in conv weights | batch x size | ms / batch (fastest) | ms / batch (median) | '
          'ms / image | vs first |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['sparsity']:.1%} | {r['shape'][0]} x {r['shape'][1]} | {r['ms']:.1f} | "
              f"{r['ms_median']:.1f} | {r['ms_img']:.2f} | {r['ratio']:.2f}x |")
    return rows


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', nargs='+', default=None,
                   help='.pt files; the first is the reference (default: data/weights/yolov5n-shapes.pt)')
    p.add_argument('--prune', nargs='*', type=float, default=[0.5, 0.9],
                   help='unstructured-sparse copies of the first model at these fractions (none: --prune)')
    p.add_argument('--shapes', nargs='+', type=parse_shape, default=[(1, 640)], help='BATCHxIMGSZ, e.g. 1x640 32x256')
    p.add_argument('--threads', type=int, default=2, help='onnxruntime intra-op threads')
    p.add_argument('--runs', type=int, default=20, help='timed runs per model and shape')
    p.add_argument('--warmup', type=int, default=3, help='untimed runs first')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> list[dict]:
    return run(**vars(opt))


if __name__ == '__main__':
    if str(ROOT) not in sys.path:  # run as a script from anywhere: make the repository importable
        sys.path.insert(0, str(ROOT))
    main(parse_opt())
