"""Tests for utils/compression/weight/dns.py: mask rule, schedule, splicing, exact final sparsity, straight-through, resume, DDP."""
from __future__ import annotations

import copy
import datetime
import io
import multiprocessing
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from utils.compression.surgery import DNSConfig, cubic_schedule, hysteresis_scores, update_probability
from utils.compression.weight.dns import DNS, exact_cut, mask_rule


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models run faster on one thread, and far faster on a shared, busy CPU (no OpenMP spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """Two convs and a Linear; weight sizes 216, 1152, 160 (each 0.6 * numel rounds within 0.5pp)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def train(model: nn.Module, dns: DNS, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    """`steps` SGD steps on random 8x8 images (batch 4) with the DNS hooks around optimizer.step()."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
        F.cross_entropy(model(x), y).backward()
        dns.before_step()
        opt.step()
        opt.zero_grad()
        dns.after_step()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


# ---------------------------------------------------------------------------------------------- pure functions
def test_mask_rule_hysteresis():
    a, b = 0.5, 2.0
    w = torch.tensor([0.1, -0.4, 0.5, -1.0, 1.9, 2.0, -2.5, 0.5, -1.0, 1.9])
    t_prev = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    # [0, 1] below a -> 0; [2..4] band (|w| == a included) keeps 1; [5, 6] >= b -> 1; [7..9] band keeps 0
    expected = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    assert torch.equal(mask_rule(w, a, b, t_prev), expected)
    assert torch.equal(mask_rule(w, a, b, t_prev.float()), expected)  # 0/1 float masks work too
    assert mask_rule(w, a, b, t_prev).dtype == torch.bool


def test_hysteresis_scores_rank_like_mask_rule():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(500, generator=g)
    t_prev = torch.rand(500, generator=g) < 0.5
    scores = hysteresis_scores(w, t_prev, 0.1)
    assert scores.dtype == torch.float32
    for q in (0.05, 0.3, 0.7, 1.2):  # any threshold on the scores is the hysteresis rule around that q
        assert torch.equal(scores >= q, mask_rule(w, 0.9 * q, 1.1 * q, t_prev))
    assert torch.allclose(hysteresis_scores(torch.tensor([-0.9, 1.1]), torch.tensor([True, False]), 0.1),
                          torch.tensor([1.0, 1.0]))  # |w|/(1-δ) kept, |w|/(1+δ) masked


def test_surgery_follows_schedule_exactly():
    """Every mask update lands on the scheduled sparsity (no lag behind it from the hysteresis band)."""
    torch.manual_seed(0)
    model = TinyNet()
    dns = DNS(model, target=0.6, surgery_steps=20, scope='global', gamma=0.0, band=0.3)
    opt = sgd(model)
    n = sum(m.numel() for m in dns.masks())
    for k in range(1, 20):
        train(model, dns, opt, 1, seed=k)
        assert dns.sparsity == pytest.approx(round(cubic_schedule(k, 20, 0.6) * n) / n, abs=1e-9), k


def test_cubic_schedule_golden():
    assert cubic_schedule(0, 10, 0.8) == 0.0
    assert cubic_schedule(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7
    assert cubic_schedule(10, 10, 0.8) == pytest.approx(0.8)
    assert cubic_schedule(25, 10, 0.8) == pytest.approx(0.8)  # clamped after the surgery phase
    assert cubic_schedule(0, 10, 0.8, s_init=0.2) == pytest.approx(0.2)
    s = [cubic_schedule(k, 100, 0.9) for k in range(101)]
    assert all(x <= y for x, y in zip(s, s[1:]))


def test_update_probability_golden():
    assert update_probability(0, 1e-3, 1.0) == 1.0
    assert update_probability(1000, 1e-3, 1.0) == pytest.approx(0.5)
    assert update_probability(1000, 1e-3, 2.0) == pytest.approx(0.25)
    assert update_probability(10 ** 6, 0.0, 1.0) == 1.0


def test_exact_cut_flips_fewest_entries():
    w = [torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])]
    keep = [torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)]  # 1 pruned, target 3: prune smallest kept (0.5, 1)
    assert exact_cut(w, keep, 0.5)[0].tolist() == [True, True, False, True, False, False]
    keep = [torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool)]  # 4 pruned, target 2: splice largest pruned (5, 4)
    assert exact_cut(w, keep, 1 / 3)[0].tolist() == [True, True, False, False, True, True]


@pytest.mark.parametrize('kwargs', [dict(target=0.0), dict(target=1.0), dict(target=-0.2), dict(band=1.0),
                                    dict(band=-0.1), dict(gamma=-1e-4), dict(power=0.0), dict(scope='channel'),
                                    dict(surgery_steps=0), dict(s_init=0.9)])
def test_config_validation_one_line(kwargs):
    args = dict(target=0.5, surgery_steps=10) | kwargs
    with pytest.raises(ValueError) as e:
        DNSConfig(**args)
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError):
        DNS(TinyNet(), **args)


# ---------------------------------------------------------------------------------------------- training hooks
def test_straight_through_gradient_and_dense_restore():
    torch.manual_seed(0)
    model = TinyNet()
    dns = DNS(model, target=0.5, surgery_steps=100, s_init=0.5, gamma=0.0)  # schedule flat at 0.5, σ = 1
    opt = sgd(model)
    train(model, dns, opt, 1)
    w = model.conv2.weight
    masked = ~dns.masks_by_name()['conv2.weight']
    assert 0.3 < masked.float().mean() <= 0.5  # from all-kept, the band [0.9q, q) stays kept (hysteresis)
    assert torch.all(w[masked] == 0)  # between steps the parameter holds W ⊙ T
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    assert w.grad[masked].abs().sum() > 0  # straight-through: masked entries get a gradient
    kept_values, pruned_values = w[~masked].clone(), dns.dense[1][masked].clone()
    dns.before_step()
    assert torch.equal(w[masked], pruned_values) and torch.all(w[masked] != 0)  # dense W is back
    assert torch.equal(w[~masked], kept_values)
    opt.step()
    opt.zero_grad()
    dns.after_step()


def test_after_step_without_before_step_raises():
    dns = DNS(TinyNet(), target=0.5, surgery_steps=10)
    with pytest.raises(RuntimeError):
        dns.after_step()


def test_masked_weight_regrows_and_is_spliced():
    lin = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.01, 0.02, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]]))
    dns = DNS(lin, target=0.25, surgery_steps=1000, s_init=0.25, gamma=0.0)  # 2 of 8 pruned, σ = 1
    opt = torch.optim.SGD(lin.parameters(), lr=0.03)
    x = torch.zeros(1, 8)
    history = []
    for step in range(10):
        x[0, 0] = 0.0 if step == 0 else 10.0  # step 0: no gradient, the mask update prunes w0 and w1
        out = lin(x)
        if step > 0 and not history[-1]:
            assert out.item() == 0.0  # forward uses W ⊙ T: the masked w0 does not contribute
        (-out).sum().backward()  # pushes w0 up by lr * 10 = 0.3 per step, masked or not
        if step > 0 and not history[-1]:
            assert lin.weight.grad[0, 0] == -10.0
        dns.before_step()
        opt.step()
        opt.zero_grad()
        dns.after_step()
        history.append(bool(dns.masks_by_name()['weight'][0, 0]))
    assert history[0] is False  # pruned first ...
    first_back = history.index(True)
    assert 1 <= first_back <= 6  # ... spliced back within a few steps (|w0| = 0.01 + 0.3k passes b <= 1.1)
    assert all(history[first_back:])
    assert dns.summary()['spliced'] >= 1


@pytest.mark.parametrize('scope', ['layer', 'global'])
def test_final_sparsity_exact_and_frozen(scope):
    torch.manual_seed(0)
    model = TinyNet()
    ema = copy.deepcopy(model)
    dns = DNS(model, target=0.6, surgery_steps=30, scope=scope, gamma=1e-2)
    opt = sgd(model)
    train(model, dns, opt, 30)
    assert dns.frozen
    masks = dns.masks_by_name()
    if scope == 'layer':
        for name, m in masks.items():
            assert 1 - m.float().mean().item() == pytest.approx(0.6, abs=0.005), name
    assert dns.sparsity == pytest.approx(0.6, abs=0.005)
    assert dns.summary()['pruned'] > 0
    train(model, dns, opt, 10, seed=1)  # fine-tuning: masks frozen
    for name, m in dns.masks_by_name().items():
        assert torch.equal(m, masks[name])
        assert torch.all(model.get_parameter(name)[~m] == 0)  # exactly zero where masked
    with torch.no_grad():
        for p, q in zip(ema.parameters(), model.parameters()):
            p.copy_(0.5 * p + 0.5 * q)  # an EMA-like average is not zero where masked ...
    dns.apply_to(ema)
    for name, m in masks.items():  # ... until the masks are applied
        assert torch.all(ema.get_parameter(name)[~m] == 0) and torch.all(ema.get_parameter(name)[m] != 0)
    table = dns.layer_table()
    assert 'conv2.weight' in table and '16x8x3x3' in table and 'frozen' in table


def test_finish_early_cuts_to_target():
    torch.manual_seed(0)
    model = TinyNet()
    dns = DNS(model, target=0.7, surgery_steps=1000, scope='global')
    train(model, dns, sgd(model), 5)
    assert dns.sparsity < 0.1  # the cubic schedule has barely started
    dns.finish()
    assert dns.frozen and dns.sparsity == pytest.approx(0.7, abs=0.005)
    for name, m in dns.masks_by_name().items():
        assert torch.all(model.get_parameter(name)[~m] == 0)


def test_names_without_wrapper_prefix_and_apply_to_mismatch():
    model = TinyNet()
    assert DNS(nn.DataParallel(model), 0.5, 10).names == DNS(model, 0.5, 10).names == \
        ['conv1.weight', 'conv2.weight', 'fc.weight']
    assert DNS(model, 0.5, 10, exclude_first=True).names == ['conv2.weight', 'fc.weight']
    with pytest.raises(ValueError):
        DNS(model, 0.5, 10).apply_to(nn.Sequential(nn.Linear(2, 2)))


def test_state_dict_round_trip_reproduces_masks_and_decisions():
    torch.manual_seed(0)
    model_a = TinyNet()
    dns_a = DNS(model_a, target=0.5, surgery_steps=30, gamma=0.1, seed=3)  # σ drops to 1/4: decisions matter
    opt_a = sgd(model_a)
    train(model_a, dns_a, opt_a, 10)
    buf = io.BytesIO()
    torch.save({'model': model_a, 'optimizer': opt_a.state_dict(), 'dns': dns_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    assert all(m.dtype == torch.bool for m in ckpt['dns']['masks'].values())
    buf = io.BytesIO()
    torch.save(ckpt['dns'], buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # plain tensors/containers: loadable by a safe loader

    model_b = ckpt['model']  # masked weights, as saved
    opt_b = sgd(model_b)
    opt_b.load_state_dict(ckpt['optimizer'])
    dns_b = DNS(model_b, target=0.9, surgery_steps=5, scope='global')  # config comes from the checkpoint
    dns_b.load_state_dict(ckpt['dns'])
    assert dns_b.cfg == dns_a.cfg and dns_b.step == 10
    dns_a.reset_counters()
    mismatches = []
    g_a = torch.Generator().manual_seed(7)
    for _ in range(25):  # crosses the final cut at step 30
        x, y = torch.randn(4, 3, 8, 8, generator=g_a), torch.randint(0, 10, (4,), generator=g_a)
        for model, dns, opt in ((model_a, dns_a, opt_a), (model_b, dns_b, opt_b)):
            F.cross_entropy(model(x), y).backward()
            dns.before_step()
            opt.step()
            opt.zero_grad()
            dns.after_step()
        mismatches.append(any(not torch.equal(x, y) for x, y in zip(dns_a.masks(), dns_b.masks())))
    assert not any(mismatches)
    assert dns_a.frozen and dns_a.summary()['pruned'] > 0  # masks really changed after the resume point
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_rejects_other_model():
    state = DNS(TinyNet(), 0.5, 10).state_dict()
    with pytest.raises(ValueError):
        DNS(TinyNet(), 0.5, 10, exclude_first=True).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- DDP (2 gloo ranks)
def _ddp_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))  # mismatched collectives fail, not hang
    try:
        for scope, sync_masks in (('layer', False), ('global', True)):
            torch.manual_seed(100 + rank)  # different init per rank: DDP's broadcast at wrap time must win
            model = TinyNet()
            dns = DNS(model, target=0.5, surgery_steps=12, scope=scope, gamma=0.2, seed=rank,  # rank 0's draw decides
                      sync_masks=sync_masks)
            ddp = nn.parallel.DistributedDataParallel(model)
            train(ddp, dns, sgd(ddp), 15, seed=rank)  # each rank its own data
            keep = torch.cat([m.flatten() for m in dns.masks()]).to(torch.uint8)
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            keeps = [torch.empty_like(keep) for _ in range(world)]
            ws = [torch.empty_like(weights) for _ in range(world)]
            dist.all_gather(keeps, keep)
            dist.all_gather(ws, weights)
            assert torch.equal(keeps[0], keeps[1]), f'{scope}: masks differ between ranks'
            assert torch.equal(ws[0], ws[1]), f'{scope}: weights differ between ranks'
            assert dns.frozen and abs(dns.sparsity - 0.5) < 0.005
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_masks_identical_across_ranks():
    # forkserver with this module preloaded: torch is imported once, not once per rank (~2x faster than spawn),
    # and the workers do not inherit this process's thread pools as a plain fork would
    multiprocessing.set_forkserver_preload([__name__])
    mp.start_processes(_ddp_worker, args=(2, _free_port()), nprocs=2, join=True, start_method='forkserver')


# ---------------------------------------------------------------------------------------------- YOLOv5 model
def test_detection_model_ema_and_plain_checkpoint():
    from models.yolo import DetectionModel
    from utils.torch_utils import ModelEMA

    torch.manual_seed(0)
    model = DetectionModel('yolov5n.yaml', nc=2)
    keys = set(model.state_dict())
    ema = ModelEMA(model)
    dns = DNS(model, target=0.5, surgery_steps=2, exclude_first=True, exclude_detect=True)
    assert dns.names[0] == 'model.1.conv.weight' and not any(n.startswith('model.24.') for n in dns.names)
    opt = sgd(model)
    for _ in range(3):  # two surgery steps, then frozen
        sum(p.pow(2).mean() for p in model(torch.rand(1, 3, 64, 64))).backward()
        dns.before_step()
        opt.step()
        opt.zero_grad()
        dns.after_step()
        ema.update(model)
    assert dns.frozen and dns.sparsity == pytest.approx(0.5, abs=0.005)
    dns.apply_to(ema)  # the ModelEMA object itself is accepted (its .ema is masked)
    buf = io.BytesIO()
    torch.save({'model': copy.deepcopy(ema.ema).half(), 'dns': dns.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)['model']
    assert type(saved) is DetectionModel and set(saved.state_dict()) == keys  # plain modules, no extra entries
    for name, keep in dns.masks_by_name().items():
        assert torch.all(saved.get_parameter(name)[~keep] == 0)
