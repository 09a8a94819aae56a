"""benchmarks/torch_pruning_peer.py: Torch-Pruning (optional dependency) prunes our DetectionModel to a FLOPs ratio."""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import torch_pruning_peer as peer
from models.yolo import DetectionModel
from utils.torch_utils import model_flops


def test_missing_torch_pruning_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch_pruning', None)  # makes `import torch_pruning` raise ImportError
    with pytest.raises(ImportError, match='pip install torch-pruning'):
        peer.import_torch_pruning()


def test_prune_with_torch_pruning_hits_flops_and_keeps_structure():
    pytest.importorskip('torch_pruning')
    torch.manual_seed(0)
    dense = DetectionModel('yolov5n.yaml', nc=3).eval()
    n_params = sum(p.numel() for p in dense.parameters())
    pruned = peer.prune_with_torch_pruning(dense, 0.5, imgsz=64, tol=0.02)
    assert abs(model_flops(pruned, 64) / model_flops(dense, 64) - 0.5) <= 0.02
    assert sum(p.numel() for p in dense.parameters()) == n_params  # the input model is not touched
    assert type(pruned) is DetectionModel
    im = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert pruned(im)[0].shape == dense(im)[0].shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 3 + 5)
    for a, b in zip(dense.model[-1].m, pruned.model[-1].m):  # Detect outputs kept, its inputs narrower
        assert b.out_channels == a.out_channels and b.in_channels < a.in_channels
    assert peer.coupling_violations(dense, pruned) == []  # residual / C3 groups keep equal widths
    assert peer.params(pruned) < n_params
