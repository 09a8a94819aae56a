"""The training-hook protocol (utils/compression/hooks.py) and the hooks train.py builds from its flags
(utils/compression/training.py): call order inside the optimizer step (around unscale, clipping and the step),
at the end of an epoch and of training; DNS state through a checkpoint.
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

import train
from tests.test_train import args, read_csv, restore_determinism, run_main, tiny_data  # noqa: F401 (fixtures)
from utils.checkpoint import load
from utils.compression.hooks import TrainingHook, TrainingHooks
from utils.compression.training import make_dns
from utils.torch_utils import ModelEMA
from utils.train_utils import TrainingError, optimizer_steps, save_training_checkpoint


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 6))


class Recorder(TrainingHook):
    """Records every hook point with what it sees: the gradient norm, whether parameters moved, the epoch."""

    key = 'rec'

    def __init__(self, name: str, events: list, model: nn.Module | None = None) -> None:
        self.name, self.events, self.model = name, events, model

    def _norm(self) -> float:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_gradients(self):
        self.events.append((self.name, 'on_gradients', self._norm() if self.model else None))

    def before_step(self):
        self.snapshot = [p.detach().clone() for p in self.model.parameters()] if self.model else None
        self.events.append((self.name, 'before_step', self._norm() if self.model else None))

    def after_step(self):
        moved = any(not torch.equal(a, p) for a, p in zip(self.snapshot, self.model.parameters())) \
            if self.model else None
        self.events.append((self.name, 'after_step', moved))

    def end_epoch(self, epoch):
        self.events.append((self.name, 'end_epoch', epoch))

    def apply_to(self, model):
        self.events.append((self.name, 'apply_to', model is not self.model))

    def progress(self):
        return {self.name: 1.0}

    def epoch_columns(self, model):
        self.events.append((self.name, 'epoch_columns', None))
        return {f'{self.name}/col': 7}

    def state_dict(self):
        return {'n': len(self.events)}

    def final_report(self):
        return f'{self.name} report'


def test_hooks_call_each_point_in_list_order():
    events = []
    hooks = TrainingHooks([Recorder('a', events), Recorder('b', events)])
    for point in ('on_gradients', 'before_step', 'after_step'):
        getattr(hooks, point)()
    hooks.end_epoch(3)
    assert [(n, p) for n, p, _ in events] == [('a', 'on_gradients'), ('b', 'on_gradients'), ('a', 'before_step'),
                                              ('b', 'before_step'), ('a', 'after_step'), ('b', 'after_step'),
                                              ('a', 'end_epoch'), ('b', 'end_epoch')]
    assert hooks.epoch_columns(nn.Identity()) == {'a/col': 7, 'b/col': 7}
    assert hooks.progress() == {'a': 1.0, 'b': 1.0}
    assert hooks.final_report() == 'a report\nb report'
    plain = TrainingHooks([TrainingHook()])
    assert plain.state_dict() == {} and plain.final_report() is None and plain.epoch_columns(nn.Identity()) == {}
    assert not TrainingHooks() and TrainingHooks([TrainingHook()])


@pytest.mark.slow
def test_train_loop_calls_hooks_around_clipping_and_step(tiny_data, tmp_path, monkeypatch):
    """train.py's loop: per optimizer step on_gradients (unclipped grads) -> clip -> before_step (norm <= 10) ->
    step -> after_step (parameters moved); per epoch end_epoch -> apply_to(EMA) -> epoch_columns (-> results.csv);
    the hook state is saved under its key; the final report is made."""
    events = []
    monkeypatch.setattr(train, 'make_hooks', lambda model, *a, **k: TrainingHooks([Recorder('r', events, model)]))
    assert run_main(args(tiny_data, tmp_path, '--noautoanchor', epochs=2)) is None
    points = [p for _, p, _ in events]
    steps = points.count('after_step')
    assert steps >= 4 and points.count('end_epoch') == 2
    step_points = [p for p in points if p in ('on_gradients', 'before_step', 'after_step')]
    assert step_points == ['on_gradients', 'before_step', 'after_step'] * steps
    norms = [(v, w) for (_, p, v), (_, q, w) in zip(events, events[1:]) if p == 'on_gradients' and q == 'before_step']
    assert all(after <= 10.0 * (1 + 1e-5) for _, after in norms)  # clipped in between
    assert any(before > 10.0 for before, _ in norms)  # YOLOv5's summed loss: clipping really acted
    assert all(math.isclose(after, min(before, 10.0), rel_tol=1e-4) for before, after in norms)
    assert all(v for _, p, v in events if p == 'after_step')  # the optimizer stepped in between
    epoch_end = [p for p in points if p in ('end_epoch', 'apply_to', 'epoch_columns')]
    assert epoch_end == ['end_epoch', 'apply_to', 'epoch_columns'] * 2
    assert all(v for _, p, v in events if p == 'apply_to')  # the EMA copy, not the trained model
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert header[-1] == 'r/col' and all(r[-1] == '7' for r in rows)
    assert load(tmp_path / 'exp' / 'weights' / 'last.pt')['rec']['n'] > 0  # state under the hook's key


# ---------------------------------------------------------------------------------------------- make_dns (DNS state)
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
    dns = make_dns(model, opt, nb=5, nw=100, nbs=64)
    assert dns.cfg.surgery_steps == optimizer_steps(10, 100, 64, 16) == 10
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.rand(2, 3, 8, 8)).square().mean().backward()
        dns.before_step()
        sgd.step()
        sgd.zero_grad()
        dns.after_step()
    assert not dns.frozen and 0 < dns.sparsity < 0.5
    ema = ModelEMA(model)
    save_training_checkpoint([tmp_path / 'last.pt'], model, ema, sgd, 0, 0.0, opt, dns=dns.state_dict())
    ckpt = load(tmp_path / 'last.pt')

    model2 = tiny_model()
    model2.load_state_dict(ckpt['model'].float().state_dict())
    dns2 = make_dns(model2, dns_opt(resume=True), nb=5, nw=100, nbs=64, state=ckpt['dns'])
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
    with pytest.raises(TrainingError, match="'dns' state"):
        make_dns(tiny_model(), dns_opt(resume=True), nb=5, nw=100, nbs=64, state=None)



def test_make_dns_constant_schedule_cuts_to_target_at_first_update():
    """train.py's default schedule: the first mask update masks the target fraction (one-shot masks, then surgery)."""
    model = tiny_model()
    dns = make_dns(model, dns_opt(dns_schedule='constant', dns_gamma=0.0), nb=5, nw=100, nbs=64)
    assert dns.sparsity == 0.0 and dns.scheduled_sparsity == 0.5
    model(torch.rand(2, 3, 8, 8)).square().mean().backward()
    dns.before_step()
    dns.after_step()
    assert not dns.frozen and dns.sparsity == pytest.approx(0.5, abs=0.005)
