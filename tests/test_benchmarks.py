"""Smoke tests: the benchmark scripts run end to end on tiny inputs and print their numbers (no timing asserted)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import dns_bench


def test_dns_bench_prints_overheads(capsys):
    threads = torch.get_num_threads()
    try:
        result = dns_bench.run(cfg='yolov5n.yaml', img=64, batch=2, nbs=4, warmup=0, iters=1, surgery_steps=100)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert set(result) == set(dns_bench.VARIANTS)
    assert all(step > 0 and hooks >= 0 for step, hooks in result.values())
    assert 'batch 2 x 2 accumulated = 4 images per optimizer step' in out
    assert 'average surgery overhead' in out and 'extra memory' in out


@pytest.mark.onnx
def test_onnx_bench_prints_ratio_table(capsys):
    from benchmarks import onnx_bench

    rows = onnx_bench.run(prune=[0.5], shapes=[(1, 64)], threads=1, runs=1, warmup=0)
    out = capsys.readouterr().out
    assert [r['model'] for r in rows] == ['yolov5n-shapes', 'yolov5n-shapes 50% unstructured']
    assert rows[0]['ratio'] == 1.0 and rows[1]['ms_median'] >= rows[1]['ms'] > 0
    assert abs(rows[1]['sparsity'] - 0.5) < 0.01
    assert '| model | zeros in conv weights | batch x size | ms / batch (fastest) |' in out and '| 1 x 64 |' in out


@pytest.mark.parametrize('onnx', [False, pytest.param(True, marks=pytest.mark.onnx)])
def test_latency_bench_prints_speedups(onnx, capsys):
    from benchmarks import latency_bench
    from utils.compression.channel.pruning import channel_multiple

    rows = latency_bench.run(cfgs=['yolov5n.yaml'], flops=0.5, shapes=[(1, 64)], repeats=1, onnx=onnx,
                             channels_last=True, keep_memory=False, per_layer=True)
    out = capsys.readouterr().out
    r = channel_multiple('cpu')
    variants = {r['variant'] for r in rows}
    assert variants == {'dense', 'weight 50%', 'channel', f'channel r{r}'}
    assert {r['backend'] for r in rows} == {'torch', 'torch NHWC'} | ({'onnxruntime'} if onnx else set())
    by = {(r['variant'], r['backend']): r for r in rows}
    assert by[('dense', 'torch')]['speedup'] == 1.0 and by[('dense', 'torch NHWC')]['speedup'] == 1.0
    dense = by[('dense', 'torch')]['gflops']
    assert by[('channel', 'torch')]['gflops'] < 0.55 * dense
    assert 0.4 * dense < by[(f'channel r{r}', 'torch')]['gflops'] < 0.55 * dense
    assert by[('weight 50%', 'torch')]['params'] == by[('dense', 'torch')]['params']
    assert 'speed-up' in out and 'yolov5n, batch 1 at 64 px' in out and f'kernel width {r} channels' in out
    assert all(row['round_q1'] <= row['round_median'] <= row['round_q3'] for row in rows)
    layer_rows = [ln for ln in out.splitlines() if ln.split()[:2] in (['24', 'Detect'], ['0', 'Conv'])]
    assert len(layer_rows) == 2 and any(ln.split()[:1] == ['sum'] for ln in out.splitlines())  # --per-layer


def test_paired_speedups_median_and_quartiles():
    from benchmarks.latency_bench import paired_speedups

    assert paired_speedups([2.0], [1.0]) == (2.0, 2.0, 2.0)
    med, q1, q3 = paired_speedups([2.0, 3.0, 4.0, 6.0, 2.0], [1.0, 1.0, 1.0, 1.0, 2.0])  # ratios 2, 3, 4, 6, 1
    assert (med, q1, q3) == (3.0, 2.0, 4.0)


def test_keep_freed_memory_takes_effect_on_glibc():
    """mallopt changes the whole process: run it in a child."""
    import platform
    import subprocess
    import sys

    code = 'from benchmarks.latency_bench import keep_freed_memory as k; print(k())'
    out = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(platform.libc_ver()[0] == 'glibc')


def test_width_bench_prints_times(capsys):
    from benchmarks import width_bench

    rows = width_bench.run(sizes=[16], widths=[8, 16], kernels=[3], repeats=1)
    out = capsys.readouterr().out
    assert [(r['channels'], r['format']) for r in rows] == [(8, 'NCHW'), (8, 'NHWC'), (16, 'NCHW'), (16, 'NHWC')]
    assert all(r['ms'] > 0 and r['gflops_per_s'] > 0 for r in rows)
    assert '16x16 px' in out and 'kernel width' in out
