"""Convolution time against channel width on this device: why kept channel counts should be multiples of the kernel
width (`--prune-round auto`).

Usage:
    python benchmarks/width_bench.py                                # 3x3 and 1x1, C -> C, 160/80/40 px, NCHW + NHWC
    python benchmarks/width_bench.py --sizes 80 --widths 16 24 32 40 48 --repeats 50

For each spatial size and width C it times one Conv2d(C, C, k, padding=k//2) on a (1, C, S, S) input (torch's default
threads, inference mode), fastest of --repeats runs, and prints ms and GFLOP/s. On an AVX-512 CPU oneDNN computes in
blocks of 16 channels: widths between multiples of 16 cost as much as the next multiple or more (they take slower
code paths), so a pruned layer of 24 channels can be slower than the dense layer of 32 it came from.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def conv_ms(channels: int, size: int, kernel: int, channels_last: bool = False, repeats: int = 20) -> float:
    """Fastest of ``repeats`` runs of a Conv2d(channels, channels, kernel) on a (1, channels, size, size) input,
    in ms."""
    conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2).eval()
    x = torch.randn(1, channels, size, size)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    best = float('inf')
    with torch.inference_mode():
        for i in range(repeats + 3):
            t = time.perf_counter()
            conv(x)
            if i >= 3:  # warm-up
                best = min(best, time.perf_counter() - t)
    return best * 1e3


def run(sizes: list[int] = (160, 80, 40), widths: list[int] | None = None, kernels: list[int] = (3, 1),
        repeats: int = 20) -> list[dict]:
    """Print one table per size; returns rows {size, kernel, channels, format, ms, gflops_per_s}."""
    from utils.compression.channel.pruning import channel_multiple

    r = channel_multiple('cpu')
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()} '
          f'(kernel width {r} channels), fastest of {repeats}')
    ws = widths or sorted({w for w in range(8, 4 * r + 1, 4)} | {r * k for k in (1, 2, 3, 4)})
    rows = []
    for size in sizes:
        print(f"\n{size}x{size} px\n{'channels':>9}{'k':>3}{'NCHW ms':>10}{'GFLOP/s':>9}{'NHWC ms':>10}{'GFLOP/s':>9}")
        for k in kernels:
            for c in ws:
                gflop = 2 * c * c * k * k * size * size / 1e9
                line = f'{c:>9}{k:>3}'
                for fmt, cl in (('NCHW', False), ('NHWC', True)):
                    ms = conv_ms(c, size, k, cl, repeats)
                    rows.append({'size': size, 'kernel': k, 'channels': c, 'format': fmt, 'ms': ms,
                                 'gflops_per_s': gflop / ms * 1e3})
                    line += f'{ms:>10.3f}{gflop / ms * 1e3:>9.1f}'
                print(line + ('' if c % r else f'   <- multiple of {r}'), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', nargs='+', type=int, default=[160, 80, 40], help='input height = width (pixels)')
    p.add_argument('--widths', nargs='+', type=int, default=None,
                   help='channel counts (default: every 4 from 8 to 4x the kernel width)')
    p.add_argument('--kernels', nargs='+', type=int, default=[3, 1], help='kernel sizes')
    p.add_argument('--repeats', type=int, default=20, help='timed runs per convolution')
    opt = p.parse_args()
    run(opt.sizes, opt.widths, opt.kernels, opt.repeats)


if __name__ == '__main__':
    main()
