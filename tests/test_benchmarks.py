"""Smoke tests: the benchmark scripts run end to end on tiny inputs and print their numbers (no timing asserted)."""
from __future__ import annotations

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
