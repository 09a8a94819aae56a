"""Tests for utils/compression/deep/sharing.py: k-means golden values, the centroid-gradient rule, the step hooks (fixed zeros,
equal members, EMA), state round trip; train.py --share-bits end to end at 64 px with interrupt + --resume (slow)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import train
from tests.conftest import shapes_subset
from utils.checkpoint import load, make_checkpoint, save
from utils.compression.deep.sharing import WeightSharing, kmeans_1d
from utils.compression.layers import prunable_layers
from utils.compression.weight.magnitude import prune


def test_kmeans_linear_init_golden():
    # linear init [1, 10]; midpoint 5.5 -> {1, 2, 3} | {10}; means 2, 10; midpoint 6 changes nothing
    c, a = kmeans_1d(torch.tensor([3.0, 10.0, 1.0, 2.0]), 2)
    assert c.tolist() == [2.0, 10.0] and a.tolist() == [0, 1, 0, 0]
    # linear init [0, 1.5, 3]: the middle cluster stays empty and keeps its centroid (linear init, as the paper)
    c, a = kmeans_1d(torch.tensor([0.0, 0.1, 0.2, 3.0]), 3)
    assert torch.allclose(c, torch.tensor([0.1, 1.5, 3.0], dtype=torch.float64)) and a.tolist() == [0, 0, 0, 2]
    # two rounds: init [-4, 0, 4] -> {-4, -3} {-1, 1, 1.5} {4}: [-3.5, 0.5, 4]; mids -1.5, 2.25: stable
    c, a = kmeans_1d(torch.tensor([-4.0, -3.0, -1.0, 1.0, 1.5, 4.0]), 3)
    assert c.tolist() == [-3.5, 0.5, 4.0] and a.tolist() == [0, 0, 1, 1, 1, 2]
    # a value on a midpoint joins the lower cluster; equal values share a cluster
    c, a = kmeans_1d(torch.tensor([0.0, 1.0, 1.0, 2.0]), 2)
    assert a.tolist() == [0, 0, 0, 1] and torch.allclose(c, torch.tensor([2 / 3, 2.0], dtype=torch.float64))
    c, a = kmeans_1d(torch.zeros(0), 4)
    assert c.shape == (4,) and a.numel() == 0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def tiny_pruned() -> Tiny:  # (both its layers are edge layers: the tests pass edge_bits=None, one width)
    m = Tiny()
    with torch.no_grad():
        for layer in (m.conv, m.fc):
            w = layer.weight
            w[w.abs() < w.abs().flatten().median()] = 0
    return m


def test_sharing_keeps_zeros_and_uses_at_most_k_values():
    m = tiny_pruned()
    zeros = [layer.weight == 0 for layer in (m.conv, m.fc)]
    share = WeightSharing(m, bits=2, edge_bits=None)
    for layer, z in zip((m.conv, m.fc), zeros):
        assert torch.equal(layer.weight == 0, z)  # zeros stay zeros, nothing else becomes zero
        assert layer.weight[~z].unique().numel() <= 4
    assert all(torch.equal(a, b.weight) for a, b in zip(share.weights(), (m.conv, m.fc)))


@pytest.mark.parametrize('step', ['sum', 'mean'])
def test_centroid_gradient_is_sum_of_member_gradients(step):
    m = tiny_pruned()
    share = WeightSharing(m, bits=2, step=step, edge_bits=None)
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    m(x).square().sum().backward()
    raw = [layer.weight.grad.clone() for layer in (m.conv, m.fc)]
    centroid = share.centroid_grads()
    share.on_gradients()
    for layer, g, index, cg in zip((m.conv, m.fc), raw, share.index, centroid):
        for k in range(share.k):
            members = index == k
            n = int(members.sum())
            expected = g[members].sum() if n else torch.tensor(0.)
            assert torch.allclose(cg[k], expected, atol=1e-6)  # the paper's rule: d loss / d centroid
            if n:  # every member steps with the centroid: the sum, or the sum / members ('mean': LR / members)
                assert torch.allclose(layer.weight.grad[members], (expected / (n if step == 'mean' else 1)).expand(n),
                                      atol=1e-6)
        assert (layer.weight.grad[index == share.k] == 0).all()  # the zero cluster gets no gradient


def test_mean_step_moves_a_centroid_by_its_members_average_sgd_step():
    m = tiny_pruned()
    share = WeightSharing(m, bits=3, edge_bits=None)
    before = [c.clone() for c in share.codebooks]
    m(torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(4))).square().sum().backward()
    raw = [layer.weight.grad.clone() for layer in (m.conv, m.fc)]
    share.on_gradients()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    share.after_step()
    for g, index, c, c0 in zip(raw, share.index, share.codebooks, before):
        for k in range(share.k):
            members = index == k
            if members.any():  # plain SGD would move the members by -lr * g; the centroid takes their mean
                assert torch.allclose(c[k], c0[k] - 0.1 * g[members].mean(), atol=1e-6)


def test_bad_centroid_step():
    with pytest.raises(ValueError, match='centroid step'):
        WeightSharing(tiny_pruned(), bits=2, step='median')


def test_optimizer_step_moves_centroids_and_keeps_sharing():
    m = tiny_pruned()
    share = WeightSharing(m, bits=3, edge_bits=None)
    before = [c.clone() for c in share.codebooks]
    zeros = [layer.weight == 0 for layer in (m.conv, m.fc)]
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        m(x).square().sum().backward()
        share.on_gradients()
        opt.step()
        opt.zero_grad()
        share.after_step()
    for layer, z, index, c, c0 in zip((m.conv, m.fc), zeros, share.index, share.codebooks, before):
        assert torch.equal(layer.weight == 0, z)
        table = torch.cat([c, c.new_zeros(1)])
        assert torch.equal(layer.weight.detach(), table[index.long()])  # weights are exactly codebook[index]
        assert not torch.equal(c, c0)  # centroids were trained


def test_apply_to_ema_and_state_round_trip():
    m = tiny_pruned()
    share = WeightSharing(m, bits=2, edge_bits=None)
    ema = Tiny()
    ema.load_state_dict(m.state_dict())
    with torch.no_grad():
        ema.conv.weight.mul_(1.5)  # an "averaged" copy with other values
    share.apply_to(ema)
    w = ema.conv.weight
    assert w[w != 0].unique().numel() <= 4 and torch.equal(w == 0, m.conv.weight == 0)
    state = share.state_dict()
    other = Tiny()  # different random weights: the state decides the shared values
    restored = WeightSharing(other, bits=2, edge_bits=None)
    restored.load_state_dict(state)
    assert torch.equal(other.conv.weight, m.conv.weight) and torch.equal(other.fc.weight, m.fc.weight)
    with pytest.raises(ValueError, match='bits'):
        WeightSharing(Tiny(), bits=3).load_state_dict(state)
    with pytest.raises(ValueError, match='2 <= bits <= 8'):
        WeightSharing(Tiny(), bits=9)


# ---------------------------------------------------------------------------------------------- train.py
@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    return shapes_subset(tmp_path_factory.mktemp('share_data'), 12, 4)


def test_share_bits_flag_errors(tmp_path):
    assert train.parse_opt(['--share-bits', '3']).share_bits == 3
    for bad in ('1', '9', 'x'):
        with pytest.raises(SystemExit):
            train.parse_opt(['--share-bits', bad])
    for argv, words in ((['--share-bits', '3'], 'needs --weights'),
                        (['--share-bits', '3', '--weights', 'w.pt', '--dns', '--target-sparsity', '0.5'], '--dns'),
                        (['--share-edge-bits', '8'], '--share-edge-bits needs --share-bits')):
        with pytest.raises(SystemExit) as e:
            train.main(train.parse_opt(argv + ['--project', str(tmp_path)]))
        assert words in str(e.value) and '\n' not in str(e.value)


@pytest.mark.slow
def test_train_share_bits_resume_saves_shared_weights(tiny_data, tmp_path, monkeypatch):
    """--share-bits 3 from a 60 % pruned yolov5n, interrupted in epoch 1 and resumed: masks and indices unchanged,
    best.pt/last.pt weights take at most 8 values per layer (exactly codebook[index] in FP16)."""
    from utils.general import ROOT

    ckpt = load(ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt')
    model = ckpt['model'].float()
    prune(model, 0.6, scope='global')
    weights = tmp_path / 'pruned.pt'
    save(make_checkpoint(model), weights)
    zeros = {f'{n}.weight': m.weight == 0 for n, m in prunable_layers(model)}

    orig = train.warmup

    def hook(optimizer, ni, *a):
        if ni == 4:  # epoch 1, iteration 1 (3 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(optimizer, ni, *a)

    monkeypatch.setattr(train, 'warmup', hook)
    argv = ['--data', str(tiny_data), '--imgsz', '64', '--batch-size', '4', '--epochs', '2', '--workers', '0',
            '--project', str(tmp_path), '--noplots', '--noautoanchor', '--weights', str(weights), '--share-bits', '3']
    with pytest.raises(SystemExit) as e:
        train.main(train.parse_opt(argv))
    assert e.value.code == 128 + signal.SIGTERM
    last, best = tmp_path / 'exp' / 'weights' / 'last.pt', tmp_path / 'exp' / 'weights' / 'best.pt'
    state = load(last)['share']
    monkeypatch.undo()
    train.main(train.parse_opt(['--resume', str(last)]))
    for f in last, best:
        saved = load(f)
        assert saved['share']['bits'] == 3
        assert all(torch.equal(saved['share']['index'][k], state['index'][k]) for k in state['index'])
        params = dict(saved['model'].named_parameters())
        for name, z in zeros.items():
            w = params[name].detach()
            assert torch.equal(w == 0, z), name  # masks fixed
            assert w[w != 0].unique().numel() <= 2 ** saved['share']['layer_bits'][name], name  # 3 bits, edges 8
    assert not all(torch.equal(load(last)['share']['codebooks'][k], state['codebooks'][k]) for k in state['codebooks'])


def test_edge_bits_share_the_first_conv_and_detect_outputs_finer():
    from models.yolo import DetectionModel
    from utils.compression.deep.sharing import edge_layers
    torch.manual_seed(0)
    m = DetectionModel('models/yolov5n.yaml', nc=3)
    edges = edge_layers(m)
    assert edges == {'model.0.conv', 'model.24.m.0', 'model.24.m.1', 'model.24.m.2'}
    share = WeightSharing(m, bits=2, edge_bits=6)
    for name, k, w in zip(share.layer_names, share.ks, share.weights()):
        assert k == (64 if name in edges else 4)
        assert w[w != 0].unique().numel() <= k
    state = share.state_dict()
    assert state['layer_bits']['model.0.conv.weight'] == 6 and state['layer_bits']['model.1.conv.weight'] == 2
    again = WeightSharing(m, bits=2, edge_bits=None)  # uniform 2 bits; resuming adopts the state's bits
    again.load_state_dict(state)
    assert again.ks == share.ks and again.edge_bits == 6
    assert all(torch.equal(a, b) for a, b in zip(share.index, again.index))
    assert WeightSharing(m, bits=3).edge_bits == 8  # the default: Han et al.'s 8 bits for the edge layers
    legacy = {k: v for k, v in state.items() if k != 'layer_bits'}
    with pytest.raises(ValueError, match='does not match'):  # a uniform 2-bit state cannot hold 64-entry codebooks
        WeightSharing(m, bits=2).load_state_dict(legacy)
    with pytest.raises(ValueError, match='2 <= bits <= 8'):
        WeightSharing(m, bits=2, edge_bits=9)
