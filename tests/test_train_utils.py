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
