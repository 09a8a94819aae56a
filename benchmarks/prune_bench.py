"""Time and memory of utils.compression.weight.magnitude.prune on a big random-init model (default yolov5x, ~86.7M parameters) on CPU.

Usage: python benchmarks/prune_bench.py [--cfg yolov5x.yaml] [--amount 0.3] [--threads 2] [--half]

Each method runs in a fresh child process (same model, same seed), so one run's freed-but-cached heap memory cannot
hide the next one's. Printed per method:
- time: wall seconds of the prune call alone (model building excluded);
- peak RSS: the largest resident-set increase over the RSS just before the call, sampled every 1 ms from
  /proc/self/statm by a thread (torch allocations are invisible to tracemalloc; spikes shorter than ~1 ms
  can be missed), and the ru_maxrss increase (whole-process peak, only counts what exceeds the build peak);
- sparsity: the report prune() returns.
Methods: ours layer-wise, ours global, and upstream's way (torch.nn.utils.prune.l1_unstructured + remove per Conv2d).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ('layer', 'global', 'torch')


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class PeakRSS:
    """Context manager sampling RSS every `interval` seconds; `.peak` is the largest increase in bytes."""

    def __init__(self, interval: float = 1e-3):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.base)


def torch_prune_like_upstream(model, amount: float) -> None:
    """Upstream YOLOv5 v7.0 utils/torch_utils.prune: l1_unstructured then remove, per Conv2d."""
    from torch import nn
    from torch.nn.utils import prune as torch_prune
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            torch_prune.l1_unstructured(m, name='weight', amount=amount)
            torch_prune.remove(m, 'weight')


def child(cfg: str, method: str, amount: float, threads: int, half: bool) -> dict:
    """Build the model, prune it once with `method`, return measurements."""
    import torch

    from models.yolo import DetectionModel
    from utils.compression.weight.magnitude import prune, sparsity

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DetectionModel(cfg).eval()
    if half:
        model.half()
    params = sum(p.numel() for p in model.parameters())
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), PeakRSS() as mem:
        t = time.perf_counter()
        if method == 'torch':
            torch_prune_like_upstream(model, amount)
        else:
            prune(model, amount, scope=method)
        dt = time.perf_counter() - t
    maxrss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024  # Linux: KiB
    r = sparsity(model)
    return {'method': method, 'params': params, 'time_s': dt, 'peak_rss_mb': mem.peak / 2**20,
            'maxrss_mb': maxrss / 2**20, 'prunable': r.prunable, 'overall': r.overall,
            'weights_mb': sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}


def run(cfg: str = 'yolov5x.yaml', amount: float = 0.3, threads: int = 2, half: bool = False) -> list[dict]:
    """Run every method in its own child process and print a table; returns the measurements."""
    rows = []
    for method in METHODS:
        cmd = [sys.executable, __file__, '--child', method, '--cfg', cfg, '--amount', str(amount),
               '--threads', str(threads)] + (['--half'] if half else [])
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, 'PYTHONPATH': str(ROOT)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"{cfg} {'FP16' if half else 'FP32'}: {r0['params'] / 1e6:.1f}M parameters ({r0['weights_mb']:.0f} MiB), "
          f'amount {amount}, {threads} CPU threads')
    print(f"{'method':<34}{'time s':>8}{'vs torch':>9}{'peak RSS MiB':>14}{'maxrss MiB':>12}{'prunable':>10}{'overall':>9}")
    names = {'layer': 'prune(scope=layer)', 'global': 'prune(scope=global)',
             'torch': 'upstream (torch l1_unstructured)'}
    t_torch = rows[-1]['time_s']
    for r in rows:
        print(f"{names[r['method']]:<34}{r['time_s']:>8.2f}{r['time_s'] / t_torch:>8.2f}x{r['peak_rss_mb']:>14.0f}"
              f"{r['maxrss_mb']:>12.0f}{r['prunable']:>10.2%}{r['overall']:>9.2%}")
    return rows


def parse_opt() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfg', default='yolov5x.yaml', help='model yaml (models/)')
    p.add_argument('--amount', type=float, default=0.3, help='fraction of weights to prune')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--half', action='store_true', help='FP16 model')
    p.add_argument('--child', choices=METHODS, help=argparse.SUPPRESS)
    return p.parse_args()


def main(opt: argparse.Namespace) -> None:
    if opt.child:
        print(json.dumps(child(opt.cfg, opt.child, opt.amount, opt.threads, opt.half)))
    else:
        run(opt.cfg, opt.amount, opt.threads, opt.half)


if __name__ == '__main__':
    main(parse_opt())
