"""Throughput of val.py (val.run end to end: loading batches, inference, NMS, matching, AP) on CPU.

Usage: python benchmarks/val_bench.py [--weights W.pt] [--imgsz 256] [--batch-size 32] [--threads 2] [--runs 2]

Default model: the upstream-trained yolov5n fixture (../shared/fixtures/upstream/yolov5n-v7.0.pt) when present,
else val.py's default (shipped weights or a random-init yolov5n: fewer detections, so NMS/AP are cheaper).
One warm-up run (label cache, lazy imports, allocator) is not timed; then each timed run of ``val.run(...)``
(plots off, FP32) is measured with a wall clock. Printed: images/second end to end, and val.py's own
per-image split (pre-process, inference, NMS) of the fastest run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / 'shared' / 'fixtures' / 'upstream' / 'yolov5n-v7.0.pt'


def run(weights: str | None = None, data: str = 'data/shapes.yaml', imgsz: int = 256, batch_size: int = 32,
        threads: int = 2, runs: int = 2, workers: int = 0) -> dict:
    """Warm up, time ``runs`` calls of val.run; print and return {images, seconds, images_per_s, ms}."""
    import torch

    import val
    from utils.general import LOGGER

    torch.set_num_threads(threads)
    weights = weights or (str(FIXTURE) if FIXTURE.is_file() else None)
    kw = dict(data=data, weights=weights, imgsz=imgsz, batch_size=batch_size, device='cpu', workers=workers,
              plots=False, half=False)
    level = LOGGER.level
    with tempfile.TemporaryDirectory() as tmp:
        LOGGER.setLevel('WARNING')  # keep the tables of the runs out of the benchmark output
        try:
            val.run(project=tmp, name='warmup', **kw)
            times, speeds = [], []
            for i in range(runs):
                t = time.perf_counter()
                _, _, ms = val.run(project=tmp, name=f'run{i}', **kw)
                times.append(time.perf_counter() - t)
                speeds.append(ms)
            images = json.loads((Path(tmp) / 'run0' / 'metrics.json').read_text())['images']
        finally:
            LOGGER.setLevel(level)
    best = min(range(runs), key=times.__getitem__)
    dt, ms = times[best], speeds[best]
    name = Path(weights).name if weights else 'val.py default model'
    print(f'val.py on CPU ({threads} threads), {name}, {images} images at {imgsz} px, batch {batch_size}, FP32')
    print(f'  end to end: {dt:.2f} s -> {images / dt:.1f} images/s (best of {runs}; all runs: '
          f"{', '.join(f'{x:.2f}' for x in times)} s)")
    print(f'  per image: {ms[0]:.1f} ms pre-process, {ms[1]:.1f} ms inference, {ms[2]:.1f} ms NMS; '
          f'the rest ({dt * 1e3 / images - sum(ms):.1f} ms) is data loading, matching and AP')
    return {'images': images, 'seconds': dt, 'images_per_s': images / dt, 'ms': ms}


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', default=None, help='model .pt (default: the upstream yolov5n fixture)')
    p.add_argument('--data', default='data/shapes.yaml', help='data yaml (default: the embedded shapes set)')
    p.add_argument('--imgsz', type=int, default=256, help='inference size (pixels)')
    p.add_argument('--batch-size', type=int, default=32, help='batch size')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--runs', type=int, default=2, help='timed runs after the warm-up')
    p.add_argument('--workers', type=int, default=0, help='dataloader workers (0: load in the main process)')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict:
    return run(**vars(opt))


if __name__ == '__main__':
    if str(ROOT) not in sys.path:  # run as a script from anywhere: make the repository importable
        sys.path.insert(0, str(ROOT))
    main(parse_opt())
