"""Channel-level DNS (utils/compression/channel/dns.py) and network slimming (utils/compression/channel/slimming.py): hooks, splicing, state."""
from __future__ import annotations

import copy

import pytest
import torch

from models.yolo import DetectionModel
from utils.compression.channel.dns import ChannelDNS
from utils.compression.channel.pruning import zero_channel_fraction
from utils.compression.channel.slimming import Slimming

CFG = {'nc': 2, 'depth_multiple': 1.0, 'width_multiple': 1.0, 'anchors': [[10, 13, 16, 30, 33, 23]],
       'backbone': [[-1, 1, 'Conv', [8, 3, 2]], [-1, 1, 'C3', [8]], [-1, 1, 'Conv', [16, 3, 2]]],
       'head': [[[2], 1, 'Detect', ['nc', 'anchors']]]}


def tiny() -> DetectionModel:
    torch.manual_seed(0)
    m = DetectionModel(copy.deepcopy(CFG))
    for i, bn in enumerate(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        bn.weight.data = torch.linspace(0.1, 1.0, bn.num_features) + i  # distinct |gamma| per channel
    return m


def fake_step(dns: ChannelDNS, change=None) -> None:
    dns.before_step()
    if change:
        change()
    dns.after_step()


def test_constant_schedule_masks_exactly_the_target_and_outputs_zero():
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=5, s_init=0.25, gamma=0.0, scope='global')
    fake_step(dns)
    n = sum(k.numel() for k in dns.keep)
    assert sum(int((~k).sum()) for k in dns.keep) == round(0.25 * n)
    assert zero_channel_fraction(m) == pytest.approx(dns.sparsity)
    for g, keep in zip(dns.groups, dns.keep):
        for p in g.producers:
            assert (p.bn.weight[~keep] == 0).all() and (p.bn.bias[~keep] == 0).all()


def test_masked_channel_gets_gradient_and_is_spliced_back():
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=100, s_init=0.25, gamma=0.0, band=0.1)
    fake_step(dns)
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    bn = dns.groups[gi].producers[0].bn
    off = torch.nonzero(~dns.keep[gi]).flatten()
    c = int(off[0])
    # straight-through: the masked gamma still receives a loss gradient (its conv keeps running)
    m.train()
    m(torch.rand(2, 3, 64, 64))[0].sum().backward()
    assert float(bn.weight.grad[c].abs()) > 0

    def grow():  # as if the optimizer followed that gradient a long way
        bn.weight.data[c] = 100.0
    fake_step(dns, grow)
    assert bool(dns.keep[gi][c]) and dns.summary()['spliced'] >= 1
    assert float(bn.weight.detach()[c]) == 100.0  # the spliced channel is live again with its learned value
    assert sum(int((~k).sum()) for k in dns.keep) == round(0.25 * dns._numel)  # still exactly the target


def test_masked_values_survive_between_steps():
    m = tiny()
    dns = ChannelDNS(m, target=0.5, surgery_steps=10, s_init=0.5, gamma=0.0)
    fake_step(dns)
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    bn = dns.groups[gi].producers[0].bn
    before = dns.dense[gi][0].clone()
    dns.before_step()
    assert torch.equal(bn.weight.data, before)  # masked gammas have their dense values during the step
    dns.after_step()


def test_final_cut_freezes_and_state_round_trips():
    m = tiny()
    dns = ChannelDNS(m, target=0.3, surgery_steps=2, gamma=0.0, seed=3)
    for _ in range(3):
        fake_step(dns)
    assert dns.frozen and dns.dense == []
    state = dns.state_dict()
    m2 = tiny()
    dns2 = ChannelDNS(m2, target=0.3, surgery_steps=2)
    dns2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(dns.keep, dns2.keep)) and dns2.frozen and dns2.step == 3
    assert zero_channel_fraction(m2) == pytest.approx(dns.sparsity)


def test_mid_surgery_state_restores_dense_values():
    m = tiny()
    dns = ChannelDNS(m, target=0.3, surgery_steps=50, s_init=0.3, gamma=0.0)
    fake_step(dns)
    state = dns.state_dict()
    m2 = copy.deepcopy(m)
    dns2 = ChannelDNS(m2, target=0.3, surgery_steps=50)
    dns2.load_state_dict(state)
    for a, b in zip(dns.dense, dns2.dense):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    saved = {n: d.clone() for n, d in state['dense'].items()}
    fake_step(dns2, lambda: [t.data.add_(1.0) for t in m2.parameters()])  # an optimizer step moves every value
    assert all(torch.equal(state['dense'][n], d) for n, d in saved.items())  # the caller's state is not written to


def test_weight_dns_state_is_refused():
    m = tiny()
    dns = ChannelDNS(m, target=0.3, surgery_steps=2)
    with pytest.raises(ValueError, match='weight-level DNS'):
        dns.load_state_dict({'masks': {}, 'step': 0})


def test_apply_to_zeroes_ema_copy():
    m = tiny()
    dns = ChannelDNS(m, target=0.4, surgery_steps=5, s_init=0.4, gamma=0.0)
    fake_step(dns)
    ema = tiny()
    dns.apply_to(ema)
    assert zero_channel_fraction(ema) == pytest.approx(dns.sparsity)


def test_slimming_adds_l1_subgradient():
    m = tiny()
    slim = Slimming(m, 0.01)
    for g in slim.gammas:
        g.grad = torch.ones_like(g)
    slim.before_step()
    for g in slim.gammas:
        assert torch.allclose(g.grad, 1 + 0.01 * torch.sign(g))
    assert slim.penalty() == pytest.approx(0.01 * float(sum(g.detach().abs().sum() for g in slim.gammas)))
    with pytest.raises(ValueError):
        Slimming(m, -1.0)
