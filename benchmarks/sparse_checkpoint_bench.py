"""File size of compact sparse checkpoints (utils/compression/deep/sparse_format.py) vs dense FP16, at several sparsities.

Usage: python benchmarks/sparse_checkpoint_bench.py [--cfg yolov5s.yaml] [--weights FILE.pt] [--codecs zlib lzma]

For each sparsity the model is pruned layer-wise (utils.compression.weight.magnitude.prune), cast to FP16 like a saved checkpoint, and
its state_dict is written with torch.save twice: dense, and through compact_state_dict (pruned weights as packed
mask + non-zero values). Printed: file sizes in MB (1e6 bytes) and the ratio compact / dense; 'dense+zlib' is the
dense file zlib-compressed (level 9), to show what generic compression alone gives; encode/decode wall seconds on
CPU; and whether decoding reproduced every tensor bit-exactly. Targets: <= 0.60x at 50%, <= 0.20x at 90%.
"""
from __future__ import annotations

import argparse
import copy
import io
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAINED = Path('/work/shared/fixtures/upstream/yolov5n-v7.0.pt')  # a real trained detector (see its README)


def file_bytes(obj) -> bytes:
    """What torch.save would write to disk for `obj`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def bench_model(name: str, model: torch.nn.Module, sparsities: list[float], codecs: list[str]) -> None:
    from utils.compression.deep.sparse_format import compact_state_dict, expand_state_dict
    from utils.compression.weight.magnitude import prune

    params = sum(p.numel() for p in model.parameters())
    print(f'\n{name}: {params / 1e6:.2f}M parameters, FP16 state_dict, layer-wise pruning')
    print(f"{'sparsity':>8} {'dense MB':>9} {'dense+zlib':>11} " +
          ' '.join(f"{c + ' MB':>9} {'ratio':>6} {'enc s':>6} {'dec s':>6}" for c in codecs) + '  bit-exact')
    for s in sparsities:
        m = copy.deepcopy(model)
        prune(m, s)
        state = {k: v.half() if v.is_floating_point() else v for k, v in m.state_dict().items()}
        dense = file_bytes(state)
        cols, exact = [], True
        for codec in codecs:
            t0 = time.perf_counter()
            compact = compact_state_dict(state, codec)
            t1 = time.perf_counter()
            f = file_bytes(compact)
            t2 = time.perf_counter()
            back = expand_state_dict(torch.load(io.BytesIO(f), weights_only=True))
            t3 = time.perf_counter()
            exact &= back.keys() == state.keys() and all(bit_equal(back[k], v) for k, v in state.items())
            cols.append(f'{len(f) / 1e6:>9.2f} {len(f) / len(dense):>5.3f}x {t1 - t0:>6.2f} {t3 - t2:>6.2f}')
        print(f'{s:>8.0%} {len(dense) / 1e6:>9.2f} {len(zlib.compress(dense, 9)) / len(dense):>10.3f}x ' +
              ' '.join(cols) + f"  {'yes' if exact else 'NO'}")


def run(cfg: str = 'yolov5s.yaml', weights: str | None = None, codecs: tuple[str, ...] = ('zlib', 'lzma'),
        sparsities: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9), threads: int = 2) -> None:
    """Benchmark a random-init `cfg` model and, when available, a trained checkpoint."""
    import logging

    from models.yolo import DetectionModel
    from utils.checkpoint import load

    logging.getLogger('yolov5').setLevel(logging.WARNING)  # no per-prune log lines in the table
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bench_model(f'{cfg} (random init)', DetectionModel(cfg).eval(), list(sparsities), list(codecs))
    w = Path(weights) if weights else TRAINED
    if w.is_file():
        bench_model(f'{w.name} (trained)', load(w)['model'].float().eval(), list(sparsities), list(codecs))


def parse_opt() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfg', default='yolov5s.yaml', help='random-init model yaml (models/)')
    p.add_argument('--weights', default=None, help=f'trained checkpoint to benchmark too (default {TRAINED})')
    p.add_argument('--codecs', nargs='+', default=['zlib', 'lzma'], choices=['zlib', 'lzma', 'none'])
    p.add_argument('--sparsities', nargs='+', type=float, default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    return p.parse_args()


def main(opt: argparse.Namespace) -> None:
    run(opt.cfg, opt.weights, tuple(opt.codecs), tuple(opt.sparsities), opt.threads)


if __name__ == '__main__':
    main(parse_opt())
