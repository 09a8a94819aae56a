"""Tests for utils/compression/weight/magnitude.py: exact counts, hand-worked golden values, brute-force global threshold, exclusions."""

import copy
import logging
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.fusion import fuse_conv_bn_eval

from utils.compression.layers import prunable_layers
from utils.compression.weight.magnitude import (SparsityReport, apply_masks, collapsed_layers, format_table,
                                                layer_sparsity, magnitude_masks, magnitude_threshold, prune, sparsity,
                                                sweep_amounts)


class ConvBN(nn.Module):
    """Stand-in for models.common.Conv: conv (no bias) + bn; fuse() folds bn into conv and deletes it."""

    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x):
        return self.conv(x) if not hasattr(self, 'bn') else self.bn(self.conv(x))

    def fuse(self):
        self.conv = fuse_conv_bn_eval(self.conv, self.bn)
        del self.bn


class Detect(nn.Module):
    """Stand-in for models.yolo.Detect: output 1x1 convs in a ModuleList `m`."""

    def __init__(self, ch=(8, 16)):
        super().__init__()
        self.m = nn.ModuleList(nn.Conv2d(c, 18, 1) for c in ch)


def tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(ConvBN(3, 8, 6, 2), ConvBN(8, 16), nn.Conv2d(16, 16, 3, bias=True), Detect((8, 16)))
    with torch.no_grad():  # random BN statistics so folding really rescales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def brute_force_masks(tensors, amount):
    """Global keep-masks by a stable sort of all |w| concatenated: order (|w|, tensor, index)."""
    flat = torch.cat([t.float().abs().flatten() for t in tensors])
    k = round(amount * flat.numel())
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop[torch.sort(flat, stable=True).indices[:k]] = True
    return [(~d).view_as(t) for d, t in zip(drop.split([t.numel() for t in tensors]), tensors)]


# ----------------------------------------------------------------------------------------------- golden values
def test_layer_masks_golden():
    w = torch.tensor([[3.0, -1.0, 2.0], [0.5, -4.0, 1.0]])
    # amount 0.5 of 6 -> k = 3: |w| sorted 0.5, 1 (at [0,1]), 1 (at [1,2]), 2, 3, 4 -> drop 0.5, -1, 1
    (mask,) = magnitude_masks([w], 0.5)
    assert mask.tolist() == [[True, False, True], [False, True, False]]
    # amount 0.4 of 6 -> k = round(2.4) = 2: 0.5 and the first of the tied 1s (lower flat index)
    (mask,) = magnitude_masks([w], 0.4)
    assert mask.tolist() == [[True, False, True], [False, True, True]]
    assert magnitude_threshold([w], 0.5) == [1.0]  # 3rd smallest |w|
    assert magnitude_threshold([w], 0.0) == [0.0]


def test_global_masks_golden():
    a, b = torch.tensor([1.0, 2.0, -2.0]), torch.tensor([2.0, 0.0])
    # order (|w|, tensor, index): b[1]=0, a[0]=1, a[1]=2, a[2]=2, b[0]=2; amount 0.6 of 5 -> k = 3
    ma, mb = magnitude_masks([a, b], 0.6, 'global')
    assert ma.tolist() == [False, False, True] and mb.tolist() == [True, False]
    assert magnitude_threshold([a, b], 0.6, 'global') == [2.0, 2.0]
    assert magnitude_threshold([a, b], 0.6, 'layer') == [2.0, 0.0]  # a: k = round(1.8) = 2; b: k = round(1.2) = 1


def test_layer_threshold_per_tensor():
    a, b = torch.tensor([1.0, 2.0, -2.0]), torch.tensor([3.0, 0.5])
    assert magnitude_threshold([a, b], 0.6, 'layer') == [2.0, 0.5]  # a: k=round(1.8)=2; b: k=round(1.2)=1


# -------------------------------------------------------------------------------------------- exact counting
@pytest.mark.parametrize('amount', [0.0, 0.1, 0.3, 0.5, 0.9])
def test_layer_prune_exact_per_layer(amount):
    model = tiny_model()
    prune(model, amount)
    for name, m in prunable_layers(model):
        n = m.weight.numel()
        assert int((m.weight == 0).sum()) == round(amount * n), name


def test_layer_prune_matches_torch_l1_unstructured():
    """Same zeros as upstream YOLOv5's prune (torch l1_unstructured + remove per Conv2d) when no |w| ties."""
    model = tiny_model()
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.Conv2d):
            torch_prune.l1_unstructured(m, 'weight', amount=0.3)
            torch_prune.remove(m, 'weight')
    prune(model, 0.3)
    for (name, m), (_, r) in zip(prunable_layers(model), prunable_layers(ref)):
        assert torch.equal(m.weight == 0, r.weight == 0), name


@pytest.mark.parametrize('amount', [0.25, 0.5, 0.77])
@pytest.mark.parametrize('ties', [False, True])
def test_global_masks_match_brute_force(amount, ties):
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 3, 3, 3), (7, 5), (33,), (2, 8, 1, 1)]
    if ties:  # small integers: many equal magnitudes and exact zeros
        tensors = [torch.randint(-4, 5, s, generator=g).float() for s in shapes]
    else:
        tensors = [torch.randn(s, generator=g) for s in shapes]
    masks = magnitude_masks(tensors, amount, 'global')
    for m, r in zip(masks, brute_force_masks(tensors, amount)):
        assert torch.equal(m, r)
    total = sum(t.numel() for t in tensors)
    assert sum(int((~m).sum()) for m in masks) == round(amount * total)
    (q,) = set(magnitude_threshold(tensors, amount, 'global'))
    mags = torch.sort(torch.cat([t.abs().flatten() for t in tensors])).values
    assert q == mags[round(amount * total) - 1].item()


def test_layer_masks_with_ties_match_brute_force():
    t = torch.randint(-3, 4, (5, 4, 3, 3), generator=torch.Generator().manual_seed(2)).float()
    (m,) = magnitude_masks([t], 0.45)
    (r,) = brute_force_masks([t], 0.45)
    assert torch.equal(m, r)


def test_global_prune_single_threshold():
    model = tiny_model()
    report = prune(model, 0.5, scope='global')
    assert report.prunable_zeros == round(0.5 * report.prunable_total)
    kept = torch.cat([m.weight[m.weight != 0].abs() for _, m in prunable_layers(model)])
    (q,) = set(magnitude_threshold([m.weight for _, m in prunable_layers(tiny_model())], 0.5, 'global'))
    assert kept.min().item() >= q  # nothing kept below the shared threshold
    layer_fracs = [f for _, _, f in layer_sparsity(model)]
    assert max(layer_fracs) - min(layer_fracs) > 0.05  # global scope really differs between layers


# ------------------------------------------------------------------------------------------- what is touched
def test_exclusions_and_names():
    model = tiny_model()
    names = [n for n, _ in prunable_layers(model)]
    assert names == ['0.conv', '1.conv', '2', '3.m.0', '3.m.1']
    assert [n for n, _ in prunable_layers(model, exclude_first=True, exclude_detect=True)] == ['1.conv', '2']
    assert [n for n, _ in prunable_layers(model, types=(nn.BatchNorm2d,))] == ['0.bn', '1.bn']
    before = copy.deepcopy(model)
    report = prune(model, 0.5, exclude_first=True, exclude_detect=True)
    for name in ('0.conv', '3.m.0', '3.m.1'):
        assert torch.equal(model.get_submodule(name).weight, before.get_submodule(name).weight)
    assert report.layers == 2 and report.prunable == pytest.approx(0.5, abs=1e-3)


def test_bias_and_batchnorm_untouched():
    model = tiny_model()
    before = copy.deepcopy(model)
    prune(model, 0.7, scope='global')
    weights = {f'{n}.weight' for n, _ in prunable_layers(model)}
    state, ref = model.state_dict(), before.state_dict()
    for k in state:
        if k not in weights:
            assert torch.equal(state[k], ref[k]), k


def test_idempotent():
    for scope in ('layer', 'global'):
        model = tiny_model()
        prune(model, 0.3, scope)
        once = copy.deepcopy(model.state_dict())
        r = prune(model, 0.3, scope)
        assert all(torch.equal(v, once[k]) for k, v in model.state_dict().items())
        assert r.prunable_zeros == sum(round(0.3 * m.weight.numel()) for _, m in prunable_layers(model)) \
            if scope == 'layer' else r.prunable_zeros == round(0.3 * r.prunable_total)


def test_fused_vs_unfused():
    """Zeros survive Conv+BN folding (BN scales each output channel), so fold(prune(m)) is as sparse as prune(m)."""
    model = tiny_model()
    prune(model, 0.4)
    fused = copy.deepcopy(model)
    for m in fused.modules():
        if isinstance(m, ConvBN):
            m.fuse()
    assert [n for n, _ in prunable_layers(fused)] == [n for n, _ in prunable_layers(model)]
    for (name, m), (_, f) in zip(prunable_layers(model), prunable_layers(fused)):
        assert torch.equal(m.weight == 0, f.weight == 0), name
    r_unfused, r_fused = sparsity(model), sparsity(fused)
    assert r_fused.prunable_zeros == r_unfused.prunable_zeros
    x = torch.randn(1, 3, 32, 32)
    body_u, body_f = model[:3], fused[:3]
    torch.testing.assert_close(body_f(x), body_u(x), atol=1e-4, rtol=1e-4)
    # pruning the fused model directly: exact count, folded biases kept
    biases = [m.conv.bias.clone() for m in fused.modules() if isinstance(m, ConvBN)]
    prune(fused, 0.6)
    assert all(int((m.weight == 0).sum()) == round(0.6 * m.weight.numel()) for _, m in prunable_layers(fused))
    assert all(torch.equal(b, m.conv.bias) for b, m in zip(biases, [m for m in fused.modules() if isinstance(m, ConvBN)]))


def test_fp16_model():
    model = tiny_model()
    ref = [m.weight.detach().float().half().float() for _, m in prunable_layers(model)]  # FP16-rounded values
    model.half()
    prune(model, 0.5, scope='global')
    assert all(m.weight.dtype == torch.float16 for _, m in prunable_layers(model))
    for (name, m), r in zip(prunable_layers(model), brute_force_masks(ref, 0.5)):
        assert torch.equal(m.weight != 0, r), name  # FP16 has many tied magnitudes: order still exact


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    model = tiny_model()
    gpu = copy.deepcopy(model).cuda()
    for scope in ('layer', 'global'):
        prune(model, 0.35, scope)
        prune(gpu, 0.35, scope)
        for (n, m), (_, g) in zip(prunable_layers(model), prunable_layers(gpu)):
            assert torch.equal(m.weight, g.weight.cpu()), n


# ------------------------------------------------------------------------------------------------ wrappers
def test_wrappers_are_looked_through():
    model = tiny_model()

    class Wrapper(nn.Module):  # DataParallel / DDP shape: the only child is `module`
        def __init__(self, m):
            super().__init__()
            self.module = m

    class EMA:  # ModelEMA shape: a plain object holding `.ema`
        def __init__(self, m):
            self.ema = m

    names = [n for n, _ in prunable_layers(model)]
    assert [n for n, _ in prunable_layers(Wrapper(model))] == names
    assert [n for n, _ in prunable_layers(EMA(model), exclude_first=True)] == names[1:]
    prune(Wrapper(model), 0.5)
    assert sparsity(EMA(model)).prunable == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(TypeError, match='torch.nn.Module'):
        prunable_layers(object())


# ------------------------------------------------------------------------------------------------ apply_masks
def test_apply_masks():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([float('nan'), -2.0]).view(2, 1, 1, 1))
    apply_masks([conv], [torch.tensor([False, True]).view(2, 1, 1, 1)])
    assert conv.weight.view(-1).tolist() == [0.0, -2.0]  # a pruned NaN becomes 0
    assert conv.weight.requires_grad
    with pytest.raises(ValueError, match='shape'):
        apply_masks([conv], [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(ValueError, match='masks'):
        apply_masks([conv], [])


# ------------------------------------------------------------------------------------------------ reports
def test_report_counts_golden():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([0.0, 0.0]))
        model[1].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 5.0]]))
    r = sparsity(model)
    # prunable: conv w (1 zero of 2) + linear w (3 of 4) = 4/6; all params add conv bias (2 zeros) = 6/8
    assert (r.prunable_zeros, r.prunable_total, r.zeros, r.total, r.layers) == (4, 6, 6, 8, 2)
    assert float(r) == r.prunable == pytest.approx(4 / 6) and r.overall == 0.75
    assert f'{r:.3g}' == '0.667'
    assert str(r) == ('sparsity 66.7% of prunable weights (6 in 2 Conv2d/Linear layers), '
                      '75.0% of all parameters (8)')
    assert isinstance(r, SparsityReport)
    rows = layer_sparsity(model)
    assert rows == [('0', (2, 1, 1, 1), 0.5), ('1', (2, 2), 0.75)]
    table = format_table(rows).splitlines()
    assert table[1].split() == ['0', '(2,', '1,', '1,', '1)', '2', '50.0%']
    assert table[-1].split() == ['total', '6', '66.7%']


def test_prune_logs_one_line(caplog):
    model = tiny_model()
    with caplog.at_level(logging.INFO, logger='yolov5'):
        prune(model, 0.3, exclude_detect=True)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith('Pruned Conv2d weights layer-wise to 30.0% (3 layers, excluding Detect outputs): sparsity')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='yolov5'):
        prune(model, 0.3, verbose=True)
    assert len(caplog.records) == 2 and '3.m.1' in caplog.records[1].getMessage()


def test_global_prune_warns_when_it_empties_a_layer(caplog):
    """A layer of tiny weights is emptied by a global cut: named in a warning and by collapsed_layers."""
    model = tiny_model()
    with torch.no_grad():
        model[1].conv.weight.mul_(1e-3)  # 8->16 conv: all its weights below every other layer's
    assert collapsed_layers(model) == []
    with caplog.at_level(logging.INFO, logger='yolov5'):
        prune(model, 0.5, scope='global')
    assert collapsed_layers(model) == [('1.conv', 1.0, 16, 16)]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and '1.conv (16/16 outputs empty, 100.00% zeros)' in warning[0]
    with torch.no_grad():
        model[1].conv.weight[3, 0, 0, 0] = 1.0  # one output back: 15/16 still empty, still collapsed
    assert collapsed_layers(model)[0][2:] == (15, 16) and collapsed_layers(model, min_dead=1.0) == []


# ------------------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize('amount', [-0.1, 1.0, 1.5, float('nan'), '0.3', True, None])
def test_invalid_amount(amount):
    with pytest.raises(ValueError, match=r'amount must be .* \[0, 1\)'):
        prune(tiny_model(), amount)
    with pytest.raises(ValueError, match='amount'):
        magnitude_masks([torch.ones(3)], amount)


def test_invalid_scope():
    with pytest.raises(ValueError, match="scope must be 'layer'"):
        prune(tiny_model(), 0.3, scope='channel')
    with pytest.raises(ValueError, match='scope'):
        magnitude_threshold([torch.ones(3)], 0.3, scope='Global')


def test_sweep_amounts():
    assert sweep_amounts() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert sweep_amounts(0.25, 0.9) == [0.0, 0.25, 0.5, 0.75]
    assert sweep_amounts(0.3, 0.0) == [0.0]
    with pytest.raises(ValueError, match='step'):
        sweep_amounts(0.0)
    with pytest.raises(ValueError, match='stop'):
        sweep_amounts(0.1, 1.0)
    assert math.isclose(sum(sweep_amounts()), 4.5)


# ------------------------------------------------------------------------------------------------ real YOLOv5
FIXTURES = __import__('pathlib').Path('/work/shared/fixtures/upstream')


@pytest.fixture(scope='module')
def yolov5n():
    from models.yolo import DetectionModel
    torch.manual_seed(0)
    return DetectionModel('yolov5n.yaml').eval()


def test_yolov5n_layers(yolov5n):
    layers = prunable_layers(yolov5n)
    assert len(layers) == 60 and layers[0][0] == 'model.0.conv' and layers[-1][0] == 'model.24.m.2'
    kept = [n for n, _ in prunable_layers(yolov5n, exclude_first=True, exclude_detect=True)]
    assert len(kept) == 56 and 'model.0.conv' not in kept and not any(n.startswith('model.24.m') for n in kept)


def test_yolov5n_prune_then_fuse(yolov5n):
    model = copy.deepcopy(yolov5n)
    report = prune(model, 0.3, exclude_first=True, exclude_detect=True)
    assert report.layers == 56
    assert report.prunable_zeros == sum(round(0.3 * m.weight.numel())
                                        for _, m in prunable_layers(model, exclude_first=True, exclude_detect=True))
    zeros = [m.weight == 0 for _, m in prunable_layers(model)]
    x = torch.rand(1, 3, 64, 64)
    y = model(x)[0]
    model.fuse()
    for (name, m), z in zip(prunable_layers(model), zeros):
        assert torch.equal(m.weight == 0, z), name  # folding BN keeps every zero
    torch.testing.assert_close(model(x)[0], y, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(not (FIXTURES / 'yolov5n-v7.0.pt').is_file(), reason='upstream fixture missing')
def test_trained_fp16_checkpoint_like_upstream():
    """A trained FP16 checkpoint: per-layer zero counts equal upstream's prune; its overall number equals ours."""
    from utils.checkpoint import load
    model = load(FIXTURES / 'yolov5n-v7.0.pt')['model'].float()
    ref = copy.deepcopy(model)
    for m in ref.modules():  # upstream utils/torch_utils.prune
        if isinstance(m, nn.Conv2d):
            torch_prune.l1_unstructured(m, 'weight', amount=0.3)
            torch_prune.remove(m, 'weight')
    report = prune(model, 0.3)
    for (name, m), (_, r) in zip(prunable_layers(model), prunable_layers(ref)):
        assert int((m.weight == 0).sum()) == int((r.weight == 0).sum()), name
    upstream_sparsity = sum(int((p == 0).sum()) for p in ref.parameters()) / sum(p.numel() for p in ref.parameters())
    assert report.overall == pytest.approx(upstream_sparsity, abs=1e-12)
