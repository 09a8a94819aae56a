"""Tests for utils/train_utils.py: LR schedule, warmup, accumulation count, freezing, results.csv, resume state,
stop signals and the DNS checkpoint round trip used by train.py."""
from __future__ import annotations

import argparse
import os
import signal

import pytest
import torch
from torch import nn

from utils import train_utils as tu
from utils.checkpoint import load
from utils.torch_utils import ModelEMA, smart_optimizer


def tiny_model() -> nn.Module:
    """Conv + BN + Conv: three optimizer groups (bias, decayed weights, BN weights) like a YOLOv5 model."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 6))


HYP = {'lr0': 0.01, 'lrf': 0.01, 'momentum': 0.937, 'warmup_momentum': 0.8, 'warmup_bias_lr': 0.1}


# ---------------------------------------------------------------------------------------------- LR and warmup
def test_lr_lambda_linear_and_cosine():
    lf = tu.lr_lambda(10, 0.01)
    assert lf(0) == pytest.approx(1.0) and lf(10) == pytest.approx(0.01) and lf(5) == pytest.approx(0.505)
    cos = tu.lr_lambda(10, 0.01, cos=True)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    assert cos(2) > lf(2)  # cosine stays high longer at the start


def test_warmup_ramps_lr_and_momentum():
    opt = smart_optimizer(tiny_model(), 'SGD', HYP['lr0'], HYP['momentum'], 5e-4)
    for g in opt.param_groups:
        g['initial_lr'] = HYP['lr0']
    tu.warmup(opt, 0, 100, 1.0, HYP)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])  # group 0 = biases
    assert opt.param_groups[1]['momentum'] == pytest.approx(0.8)
    tu.warmup(opt, 50, 100, 0.5, HYP)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.0525, 0.0025, 0.0025])
    assert opt.param_groups[2]['momentum'] == pytest.approx(0.8685)
    tu.warmup(opt, 100, 100, 1.0, HYP)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.01] * 3)


def test_warmup_sets_adam_beta1():
    opt = smart_optimizer(tiny_model(), 'Adam', 1e-3, HYP['momentum'], 5e-4)
    for g in opt.param_groups:
        g['initial_lr'] = 1e-3
    tu.warmup(opt, 0, 100, 1.0, HYP)
    assert opt.param_groups[0]['betas'] == pytest.approx((0.8, 0.999))


def test_accumulation_rule_hand_worked():
    assert tu.warmup_accumulate(0, 100, 64, 16) == 1
    assert tu.warmup_accumulate(100, 100, 64, 16) == 4
    assert tu.warmup_accumulate(500, 100, 64, 16) == 4
    assert tu.warmup_accumulate(500, 100, 64, 128) == 1
    # batch 16: accumulate = round(1 + 0.03 ni) = 1 for ni < 17 -> a step every iteration
    assert tu.optimizer_steps(8, 100, 64, 16) == 8
    # batch 1: accumulate 1, 2, 2, 3, 4, 4, 5, 5 for ni = 0..7 -> steps at ni = 0, 2, 7
    assert tu.optimizer_steps(8, 100, 64, 1) == 3


def test_multi_scale_gives_stride_multiples():
    imgs = torch.rand(2, 3, 64, 96)
    for _ in range(5):
        out = tu.multi_scale(imgs, 64, 32)
        assert out.shape[:2] == (2, 3) and all(s % 32 == 0 for s in out.shape[2:])
        assert 32 <= max(out.shape[2:]) <= 160


# ---------------------------------------------------------------------------------------------- model setup
def test_freeze_layers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(*(nn.Conv2d(2, 2, 1) for _ in range(12)))

    m = M()
    assert tu.freeze_layers(m, [0]) == []
    frozen = tu.freeze_layers(m, [2])
    assert frozen == ['model.0.weight', 'model.0.bias', 'model.1.weight', 'model.1.bias']
    frozen = tu.freeze_layers(m, [1, 10])  # a list: exactly these layers ('model.1.' must not match model.10/11)
    assert frozen == ['model.1.weight', 'model.1.bias', 'model.10.weight', 'model.10.bias']
    assert m.model[0].weight.requires_grad  # unfrozen again


# ---------------------------------------------------------------------------------------------- results.csv
def test_append_results_upstream_format(tmp_path):
    f = tmp_path / 'results.csv'
    tu.append_results(f, 0, [0.1] * 13)
    tu.append_results(f, 1, [0.123456789] * 13)
    lines = f.read_text().splitlines()
    assert lines[0].split(',')[0] == '%20s' % 'epoch' and len(lines[0].split(',')[0]) == 20
    assert [c.strip() for c in lines[0].split(',')] == ['epoch', *tu.RESULTS_COLUMNS]
    assert lines[2].split(',')[:2] == ['%20.5g' % 1, '%20.5g' % 0.123456789]
    g = tmp_path / 'sparse.csv'
    tu.append_results(g, 0, [0.0] * 13, {'sparsity': 0.5, 'dns/pruned': 123456789, 'dns/spliced': 7})
    header, row = g.read_text().splitlines()
    assert [c.strip() for c in header.split(',')][-3:] == list(tu.DNS_COLUMNS)
    assert [c.strip() for c in row.split(',')][-3:] == ['0.5', '123456789', '7']  # counts exact, not 1.2346e+08
    with pytest.raises(ValueError):
        tu.append_results(g, 1, [0.0] * 12)


# ---------------------------------------------------------------------------------------------- resume
def test_restore_training_state_and_resume_opt(tmp_path):
    model = tiny_model()
    opt = smart_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    ema = ModelEMA(model)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    ema.update(model)
    ema.update(model)
    args = argparse.Namespace(weights='', epochs=5, resume=False, hyp={'lr0': 0.01})
    tu.save_training_checkpoint([tmp_path / 'last.pt'], model, ema, opt, 2, 0.25, args)
    ckpt = load(tmp_path / 'last.pt')
    assert ckpt['epoch'] == 2 and ckpt['updates'] == 2 and ckpt['opt']['epochs'] == 5
    assert next(ckpt['model'].parameters()).dtype == torch.float16

    model2 = tiny_model()
    opt2 = smart_optimizer(model2, 'SGD', 0.01, 0.937, 5e-4)
    ema2 = ModelEMA(model2)
    best, start, epochs = tu.restore_training_state(ckpt, opt2, ema2, 'last.pt', 5, True)
    assert (best, start, epochs) == (0.25, 3, 5)
    assert ema2.updates == 2
    assert opt2.state_dict()['state'].keys() == opt.state_dict()['state'].keys()
    for a, b in zip(ema.ema.parameters(), ema2.ema.parameters()):
        torch.testing.assert_close(a.half().float(), b)

    defaults = argparse.Namespace(weights='', epochs=30, resume=False, new_flag='x', cfg='a.yaml')
    ropt = tu.resume_opt(ckpt, tmp_path / 'last.pt', defaults)
    assert ropt.epochs == 5 and ropt.new_flag == 'x' and ropt.resume is True and ropt.cfg == ''
    assert ropt.weights == str(tmp_path / 'last.pt')
    ckpt['optimizer'] = None  # a stripped (finished) checkpoint
    with pytest.raises(tu.TrainingError, match='finished'):
        tu.resume_opt(ckpt, tmp_path / 'last.pt', defaults)


def test_latest_run(tmp_path):
    assert tu.latest_run(tmp_path) is None
    for i, name in enumerate(('exp', 'exp2')):
        f = tmp_path / name / 'weights' / 'last.pt'
        f.parent.mkdir(parents=True)
        f.write_bytes(b'x')
        os.utime(f, (1e9 + i, 1e9 + i))
    assert tu.latest_run(tmp_path) == tmp_path / 'exp2' / 'weights' / 'last.pt'


# ---------------------------------------------------------------------------------------------- signals
def test_stop_signal_sets_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with tu.StopSignal() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)  # handled (not fatal) inside the context
        assert stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before  # a second signal acts as before
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is before_int


def test_any_rank_single_process():
    assert tu.any_rank([True, False], torch.device('cpu'), 1) == [True, False]


# ---------------------------------------------------------------------------------------------- DNS state
def dns_opt(**kw) -> argparse.Namespace:
    d = dict(target_sparsity=0.5, dns_scope='layer', dns_band=0.1, dns_gamma=1e-4, dns_power=1.0,
             dns_schedule='constant', dns_surgery_epochs=2, batch_size=16, seed=0, prune_exclude_first=False,
             prune_exclude_detect=False, resume=False, hyp={}, dns_granularity='weight', prune_importance='l1',
             prune_round=1)
    d.update(kw)
    return argparse.Namespace(**d)


def test_dns_state_survives_checkpoint_round_trip(tmp_path):
    """Mid-surgery: masks, masked values, step and RNG come back from ckpt['dns'] exactly (what --resume relies on)."""
    model = tiny_model()
    opt = dns_opt(dns_schedule='cubic')  # sparsity still ramping after 4 steps
    dns = tu.make_dns(model, opt, nb=5, nw=100, nbs=64)
    assert dns.cfg.surgery_steps == tu.optimizer_steps(10, 100, 64, 16) == 10
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.rand(2, 3, 8, 8)).square().mean().backward()
        dns.before_step()
        sgd.step()
        sgd.zero_grad()
        dns.after_step()
    assert not dns.frozen and 0 < dns.sparsity < 0.5
    ema = ModelEMA(model)
    tu.save_training_checkpoint([tmp_path / 'last.pt'], model, ema, sgd, 0, 0.0, opt, dns=dns.state_dict())
    ckpt = load(tmp_path / 'last.pt')

    model2 = tiny_model()
    model2.load_state_dict(ckpt['model'].float().state_dict())
    dns2 = tu.make_dns(model2, dns_opt(resume=True), nb=5, nw=100, nbs=64, state=ckpt['dns'])
    assert dns2.step == dns.step and dns2.frozen is False
    masks, masks2 = dns.masks_by_name(), dns2.masks_by_name()
    assert all(torch.equal(masks[k], masks2[k]) for k in masks)
    assert torch.equal(dns.generator.get_state(), dns2.generator.get_state())
    masked = {k: v for k, v in dns.state_dict()['pruned_values'].items()}
    for k, v in dns2.state_dict()['pruned_values'].items():
        assert torch.equal(v, masked[k])  # the dense values of masked weights (FP32) are kept exactly
    params = dict(model2.named_parameters())
    assert all((params[k][~keep] == 0).all() for k, keep in masks2.items())


def test_make_dns_needs_state_on_resume():
    with pytest.raises(tu.TrainingError, match="'dns' state"):
        tu.make_dns(tiny_model(), dns_opt(resume=True), nb=5, nw=100, nbs=64, state=None)



def test_make_dns_constant_schedule_cuts_to_target_at_first_update():
    """train.py's default schedule: the first mask update masks the target fraction (one-shot masks, then surgery)."""
    model = tiny_model()
    dns = tu.make_dns(model, dns_opt(dns_schedule='constant', dns_gamma=0.0), nb=5, nw=100, nbs=64)
    assert dns.sparsity == 0.0 and dns.scheduled_sparsity == 0.5
    model(torch.rand(2, 3, 8, 8)).square().mean().backward()
    dns.before_step()
    dns.after_step()
    assert not dns.frozen and dns.sparsity == pytest.approx(0.5, abs=0.005)
