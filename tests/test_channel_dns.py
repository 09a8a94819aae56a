"""Channel-level DNS (utils/compression/channel/dns.py) and network slimming (channel/slimming.py): straight-through
masks, splicing, Taylor scores, state."""
from __future__ import annotations

import copy
import io

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


def masked_copy(m, dns: ChannelDNS):
    """The model as the EMA copy / a checkpoint sees it: masked channels with BN scale and shift 0, no forward masks."""
    ref = copy.deepcopy(m)
    dns.apply_to(ref)
    return ref


def test_constant_schedule_masks_exactly_the_target_and_outputs_zero():
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=5, s_init=0.25, gamma=0.0, scope='global')
    dense = {n: t.detach().clone() for ps in dns.params for n, t in ps}
    fake_step(dns)
    n = sum(k.numel() for k in dns.keep)
    assert sum(int((~k).sum()) for k in dns.keep) == round(0.25 * n)
    # during surgery the parameters keep their dense values; the masks act on the forward pass
    assert all(torch.equal(t, dense[n]) for ps in dns.params for n, t in ps)
    ref = masked_copy(m, dns)
    assert zero_channel_fraction(ref) == pytest.approx(dns.sparsity)
    x = torch.rand(2, 3, 64, 64)
    m.eval(), ref.eval()
    assert torch.allclose(m(x)[0], ref(x)[0], atol=1e-6)  # forward masks == zeroed channels
    for g, keep in zip(dns.groups, dns.keep):
        for p in g.producers:
            assert (ref.get_submodule(p.name.rpartition('.')[0]).bn.weight[~keep] == 0).all()


def test_masked_channel_gets_the_straight_through_gradient():
    """An off channel's filters get dL/dy of its (zero) output through its dense block, as if it were on; every
    other gradient is the masked network's own (no gradient flows through off channels into earlier layers)."""
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=100, s_init=0.25, gamma=0.0, band=0.1)
    fake_step(dns)
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    block, conv = dns.outputs[gi][0], dns.groups[gi].producers[0].conv
    off = ~dns.keep[gi]
    ref = masked_copy(m, dns)
    ref_block = ref.get_submodule(next(n for n, x in m.named_modules() if x is block))
    seen = {}

    def keep_input(mod, args, out):
        seen['x'] = args[0]

    def keep_output(mod, args, out):
        out.retain_grad()
        seen['ref_out'] = out
    h1, h2 = block.register_forward_hook(keep_input), ref_block.register_forward_hook(keep_output)
    x = torch.rand(2, 3, 64, 64)
    m.train(), ref.train()
    m(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    h1.remove(), h2.remove()
    g_out = seen['ref_out'].grad  # dL/dy at the masked point (the same forward in both models)
    assert float(g_out[:, off].abs().sum()) > 0
    with torch.no_grad():
        dns._stop_straight_through()  # the block as if its channels were on
    expect = torch.autograd.grad(block(seen['x'].detach()), conv.weight, g_out)[0]
    assert float(conv.weight.grad[off].abs().sum()) > 0  # the filters of an off channel keep training
    assert torch.allclose(conv.weight.grad[off], expect[off], rtol=1e-4, atol=1e-6)
    grads = {n: p.grad for n, p in ref.named_parameters()}
    kept_rows = {id(pr.conv.weight): k for g, k in zip(dns.groups, dns.keep) for pr in g.producers}
    managed = {id(t) for ps in dns.params for _, t in ps}  # BN scale/shift: ref's masked rows are 0, no gradient
    for n, p in m.named_parameters():  # kept channels and later layers: exactly the masked network's gradient
        if id(p) in managed or p.grad is None:
            continue
        rows = kept_rows.get(id(p), slice(None))
        assert torch.allclose(p.grad[rows], grads[n][rows], rtol=1e-4, atol=1e-5), n


def test_masked_channel_is_spliced_back():
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=100, s_init=0.25, gamma=0.0, band=0.1)
    fake_step(dns)
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    bn = dns.groups[gi].producers[0].bn
    c = int(torch.nonzero(~dns.keep[gi]).flatten()[0])
    ema = masked_copy(m, dns)

    def grow():  # as if the optimizer followed the straight-through gradient a long way
        bn.weight.data[c] = 100.0
    fake_step(dns, grow)
    assert bool(dns.keep[gi][c]) and dns.summary()['spliced'] >= 1
    assert dns.returned() >= 1 and 'returned' in dns.layer_table()  # masked once, kept now
    assert float(bn.weight.detach()[c]) == 100.0  # the spliced channel is live again with its learned value
    assert sum(int((~k).sum()) for k in dns.keep) == round(0.25 * dns._numel)  # still exactly the target
    dns.apply_to(ema)  # the EMA copy held the channel at 0: it gets the training model's value
    name = next(n for n, t in dns.params[gi] if t is bn.weight)
    assert float(dict(ema.named_parameters())[name].detach()[c]) == 100.0


def test_forward_masks_leave_no_trace_on_the_model():
    m = tiny()
    dns = ChannelDNS(m, target=0.5, surgery_steps=10, s_init=0.5, gamma=0.0)
    fake_step(dns)
    assert not any(mod._forward_hooks for mod in m.modules())  # one global hook: checkpoints stay plain pickles
    buf = io.BytesIO()
    torch.save(copy.deepcopy(m), buf)
    dns.finish()
    assert dns._ste is None and zero_channel_fraction(m) == pytest.approx(dns.sparsity)
    x = torch.rand(1, 3, 64, 64)
    m.eval()
    y = m(x)[0]
    del dns
    assert torch.equal(m(x)[0], y)  # after the cut the zeros are in the parameters, not in a hook


def test_final_cut_freezes_and_state_round_trips():
    m = tiny()
    dns = ChannelDNS(m, target=0.3, surgery_steps=2, gamma=0.0, seed=3)
    for _ in range(3):
        fake_step(dns)
    assert dns.frozen and dns._ste is None and dns.state_dict()['dense'] == {}
    assert zero_channel_fraction(m) == pytest.approx(dns.sparsity)
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
    m2 = masked_copy(m, dns)  # --resume loads the EMA copy, whose masked channels are 0
    dns2 = ChannelDNS(m2, target=0.3, surgery_steps=50)
    dns2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(dns.keep, dns2.keep))
    for ps, ps2 in zip(dns.params, dns2.params):
        assert all(torch.equal(t, t2) for (_, t), (_, t2) in zip(ps, ps2))
    saved = {n: d.clone() for n, d in state['dense'].items()}
    fake_step(dns2, lambda: [t.data.add_(1.0) for t in m2.parameters()])  # an optimizer step moves every value
    assert all(torch.equal(state['dense'][n], d) for n, d in saved.items())  # the caller's state is not written to
    x = torch.rand(1, 3, 64, 64)
    m.eval(), m2.eval()
    fake_step(dns, lambda: [t.data.add_(1.0) for t in m.parameters()])
    assert torch.allclose(m(x)[0], m2(x)[0], atol=1e-5)  # both masked alike


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


def test_taylor_scores_are_the_first_order_loss_change():
    """sum(y * dL/dy) of an off channel ~ L(channel on by eps) - L(off), over eps (finite difference)."""
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=100, s_init=0.25, gamma=0.0, importance='taylor')
    fake_step(dns)  # no gradient seen yet: the first cut falls back to the weight-based ranking
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    gate = dns._gates[gi][0]
    c = int(gate.off[0])
    m.train()
    x = torch.rand(2, 3, 64, 64)

    def loss() -> torch.Tensor:
        return sum(p.square().mean() for p in m(x))

    loss().backward()
    first_order = float(gate.taylor[c])
    assert first_order != 0
    with torch.no_grad():
        base = float(loss())
        eps = 1e-3
        gate.keep[c] = eps
        opened = float(loss())
        gate.keep[c] = 0.0
    assert (opened - base) / eps == pytest.approx(first_order, rel=0.05, abs=1e-4)
    fake_step(dns)  # folds the step's terms into the running mean of their squares
    assert dns.taylor_steps == 2  # (the first step had no backward pass: zeros)
    assert float(dns.taylor[gi][c]) == pytest.approx((1 - dns.cfg.taylor_decay) * first_order ** 2, rel=1e-5)
    assert float(gate.taylor.abs().sum()) == 0
    state = dns.state_dict()
    dns2 = ChannelDNS(masked_copy(m, dns), target=0.25, surgery_steps=100, importance='taylor')
    dns2.load_state_dict(state)
    assert dns2.taylor_steps == 2 and all(torch.equal(a, b) for a, b in zip(dns.taylor, dns2.taylor))
    assert all(torch.equal(a, b) for a, b in zip(dns.ever_off, dns2.ever_off))


def test_taylor_importance_splices_the_channel_the_loss_wants():
    m = tiny()
    dns = ChannelDNS(m, target=0.25, surgery_steps=100, s_init=0.25, gamma=0.0, importance='taylor', taylor_decay=0)
    fake_step(dns)
    gi = next(i for i, k in enumerate(dns.keep) if not bool(k.all()))
    c = int(dns._gates[gi][0].off[0])

    def wanted():  # this step's first-order terms: all alike, but switching c on lowers the loss most
        for gates in dns._gates:
            for g in gates:
                g.taylor.fill_(1e-3)
        dns._gates[gi][0].taylor[c] = 10.0
    wanted()
    fake_step(dns)
    assert bool(dns.keep[gi][c]) and dns.summary()['spliced'] >= 1
    assert sum(int((~k).sum()) for k in dns.keep) == round(0.25 * dns._numel)


def test_taylor_without_surgery_falls_back_to_weight_ranking():
    m1, m2 = tiny(), tiny()
    a = ChannelDNS(m1, target=0.3, surgery_steps=5, importance='taylor')
    b = ChannelDNS(m2, target=0.3, surgery_steps=5, importance='group')
    a.finish(), b.finish()
    assert all(torch.equal(x, y) for x, y in zip(a.keep, b.keep))
