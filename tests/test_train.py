"""Tests for train.py: flags and one-line errors (fast); end-to-end runs at 64 px on 12 images (slow):
smoke outputs, interrupt + --resume, SIGTERM, non-finite loss, 2-process DDP (gloo), DNS fine-tuning + resume."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import train
from models.common import C3, Conv
from models.experimental import attempt_load
from models.yolo import Detect, DetectionModel
from tests.conftest import shapes_subset
from utils.checkpoint import load, make_checkpoint, save
from utils.compression.layers import prunable_layers
from utils.compression.weight.magnitude import prune
from utils.loss import ComputeLoss
from utils.train_utils import DNS_COLUMNS, RESULTS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
NB = 3  # batches per epoch: 12 training images, --batch-size 4


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    """A data yaml listing 12 training and 4 validation images of the embedded shapes set."""
    return shapes_subset(tmp_path_factory.mktemp('tiny_data'), 12, 4)


@pytest.fixture(autouse=True)
def restore_determinism():
    """train() asks torch for deterministic algorithms (as upstream); do not leak that into other tests."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def args(data: Path, project: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ['--data', str(data), '--imgsz', '64', '--batch-size', '4', '--epochs', str(epochs), '--workers', '0',
            '--project', str(project), '--noplots', *extra]


def run_main(argv: list[str]) -> int | str | None:
    """train.main in this process; returns the SystemExit code (None when it returns normally)."""
    try:
        train.main(train.parse_opt(argv))
    except SystemExit as e:
        return e.code
    return None


def read_csv(f: Path) -> tuple[list[str], list[list[str]]]:
    header, *rows = f.read_text().splitlines()
    return [c.strip() for c in header.split(',')], [[c.strip() for c in r.split(',')] for r in rows]


def signal_at(monkeypatch, ni_stop: int, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to this process when the loop reaches iteration ``ni_stop`` (hooked into the warmup call)."""
    orig = train.warmup

    def hook(optimizer, ni, *a):
        if ni == ni_stop:
            os.kill(os.getpid(), sig)
        return orig(optimizer, ni, *a)

    monkeypatch.setattr(train, 'warmup', hook)


# ---------------------------------------------------------------------------------------------- fast: flags
def test_parse_opt_defaults():
    opt = train.parse_opt([])
    assert (opt.weights, opt.cfg, opt.epochs, opt.batch_size, opt.imgsz) == ('', '', 30, 16, 256)
    assert Path(opt.data).name == 'shapes.yaml' and Path(opt.hyp).name == 'hyp.scratch-low.yaml'
    assert opt.freeze == [0] and opt.patience == 100 and opt.save_period == -1 and opt.optimizer == 'SGD'
    assert Path(opt.project) == ROOT / 'runs/train' and opt.name == 'exp' and opt.resume is False
    assert train.parse_opt(['--resume']).resume is True
    assert train.parse_opt(['--cache']).cache == 'ram'
    assert train.parse_opt(['--img', '320', '--freeze', '1', '2']).imgsz == 320
    assert train.parse_opt(['--local-rank', '1']).local_rank == 1


@pytest.mark.parametrize('argv, words', [
    (['--batch-size', '-1'], 'AutoBatch'),
    (['--batch-size', '0'], 'positive'),
    (['--target-sparsity', '1.5'], '(0, 1)'),
    (['--target-sparsity', '0'], '(0, 1)'),
    (['--dns-band', '1'], '[0, 1)'),
    (['--dns-scope', 'tensor'], 'invalid choice'),
    (['--optimizer', 'RMSProp'], 'invalid choice'),
    (['--cache', 'gpu'], 'invalid choice'),
    (['--epochs', '0'], '>= 1'),
])
def test_bad_flag_values_are_argparse_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_opt(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'error: argument' in err and words in err


@pytest.mark.parametrize('argv, words', [
    (['--target-sparsity', '0.5'], '--target-sparsity needs --dns'),
    (['--dns-scope', 'global'], '--dns-scope needs --dns'),
    (['--prune-exclude-detect'], '--prune-exclude-detect needs --dns'),
    (['--dns'], '--dns needs --target-sparsity'),
    (['--dns', '--target-sparsity', '0.5', '--epochs', '2', '--dns-surgery-epochs', '3'], 'exceeds --epochs 2'),
    (['--evolve'], 'not implemented'),
    (['--resume', 'missing/last.pt'], 'not found'),
])
def test_invalid_combinations_are_one_line_errors(argv, words, tmp_path):
    code = run_main([*argv, '--project', str(tmp_path)])
    assert isinstance(code, str) and code.startswith('ERROR: ') and '\n' not in code and words in code
    assert not list(tmp_path.iterdir())  # refused before any run folder was made


@pytest.mark.parametrize('epochs, surgery', [(1, 1), (2, 1), (5, 2), (10, 5), (31, 15)])
def test_dns_surgery_defaults_to_first_half(epochs, surgery):
    opt = train.parse_opt(['--dns', '--target-sparsity', '0.5', '--epochs', str(epochs)])
    train.check_dns_opt(opt)
    assert opt.dns_surgery_epochs == surgery  # the rest of the epochs fine-tune with frozen masks
    assert (opt.dns_scope, opt.dns_band, opt.dns_schedule) == ('layer', 0.1, 'constant')


def test_missing_weights_and_data_are_one_line_errors(tiny_data, tmp_path):
    code = run_main(args(tiny_data, tmp_path, '--weights', str(tmp_path / 'nope.pt')))
    assert isinstance(code, str) and code.startswith('ERROR: ') and 'nope.pt' in code and '\n' not in code
    code = run_main(args(tmp_path / 'nothere.yaml', tmp_path))
    assert isinstance(code, str) and code.startswith('ERROR: ') and 'nothere.yaml' in code


# ---------------------------------------------------------------------------------------------- slow: runs
@pytest.mark.slow
def test_smoke_one_epoch_outputs(tiny_data, tmp_path):
    assert run_main([a for a in args(tiny_data, tmp_path) if a != '--noplots']) is None
    run = tmp_path / 'exp'
    for f in ('weights/last.pt', 'weights/best.pt', 'results.csv', 'results.png', 'labels.jpg', 'opt.yaml',
              'hyp.yaml', 'train_batch0.jpg', 'train_batch1.jpg', 'train_batch2.jpg'):
        assert (run / f).is_file(), f
    header, rows = read_csv(run / 'results.csv')
    assert header == ['epoch', *RESULTS_COLUMNS]  # no sparsity column for a dense model
    assert [r[0] for r in rows] == ['0'] and all(float(x) == float(x) for x in rows[0])
    assert run.joinpath('results.csv').read_text().startswith('%20s,' % 'epoch')

    ckpt = load(run / 'weights' / 'last.pt')
    assert ckpt['epoch'] == -1 and ckpt['optimizer'] is None and ckpt['ema'] is None  # stripped like a release
    assert type(ckpt['model']) is DetectionModel and next(ckpt['model'].parameters()).dtype == torch.float16
    assert isinstance(ckpt['opt'], dict) and ckpt['opt']['imgsz'] == 64
    assert all(not isinstance(v, Path) for v in ckpt['opt'].values())
    model = attempt_load(run / 'weights' / 'last.pt')
    assert type(model) is DetectionModel and model.names == {0: 'circle', 1: 'rectangle', 2: 'triangle'}
    kinds = {type(m) for m in model.modules()}
    assert {Conv, C3, Detect} <= kinds
    y = model(torch.zeros(1, 3, 64, 64))[0]
    assert y.shape[-1] == 8 and torch.isfinite(y).all()


@pytest.mark.slow
def test_option_combination_runs(tiny_data, tmp_path):
    """Less common flags together: they must all reach the loop and leave their traces."""
    extra = ['--multi-scale', '--image-weights', '--cos-lr', '--freeze', '3', '--optimizer', 'AdamW',
             '--label-smoothing', '0.1', '--cache', '--save-period', '1', '--single-cls', '--noautoanchor', '--quad']
    assert run_main(args(tiny_data, tmp_path, *extra, epochs=2)) is None
    w = tmp_path / 'exp' / 'weights'
    assert (w / 'epoch0.pt').is_file() and (w / 'epoch1.pt').is_file()
    ckpt = load(w / 'epoch0.pt')
    assert ckpt['opt']['optimizer'] == 'AdamW' and ckpt['model'].names == {0: 'item'} and ckpt['model'].nc == 1
    assert ckpt['model'].hyp['label_smoothing'] == 0.1
    frozen = ckpt['optimizer']['state']  # frozen parameters (layers 0-2) never get optimizer state
    assert 0 < len(frozen) < sum(1 for _ in ckpt['model'].parameters())
    model = load(w / 'last.pt')['model']
    start = dict(load(w / 'epoch0.pt')['model'].named_parameters())
    assert all(torch.equal(p, start[k]) for k, p in model.named_parameters() if k.startswith('model.0.'))


@pytest.mark.slow
def test_interrupt_then_resume_continues_epochs(tiny_data, tmp_path, monkeypatch):
    signal_at(monkeypatch, NB + 1)  # epoch 1, iteration 1
    code = run_main(args(tiny_data, tmp_path, '--noval', epochs=2))
    assert code == 128 + signal.SIGTERM
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    ckpt = load(last)
    assert ckpt['epoch'] == 0 and ckpt['interrupted'] == {'epoch': 1, 'iteration': 1}
    assert ckpt['optimizer'] is not None and ckpt['updates'] == NB + 1
    assert isinstance(attempt_load(last), DetectionModel)
    assert [r[0] for r in read_csv(tmp_path / 'exp' / 'results.csv')[1]] == ['0']
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored

    monkeypatch.undo()
    assert run_main(['--resume', str(last)]) is None
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert [r[0] for r in rows] == ['0', '1']  # epoch 1 appended to the same run
    assert not (tmp_path / 'exp2').exists()
    assert float(rows[1][header.index('x/lr1')]) > float(rows[0][header.index('x/lr1')])  # warmup went on
    ckpt = load(last)
    assert ckpt['epoch'] == -1 and ckpt['opt']['resume'] is True


@pytest.mark.slow
def test_nonfinite_loss_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    class NanLoss(ComputeLoss):
        """The real loss, made NaN from the first training iteration of epoch 1 on (validation untouched)."""
        calls = 0

        def __call__(self, p, targets):
            loss, items = super().__call__(p, targets)
            if torch.is_grad_enabled():
                NanLoss.calls += 1
                if NanLoss.calls > NB:
                    loss = loss * float('nan')
            return loss, items

    monkeypatch.setattr(train, 'ComputeLoss', NanLoss)
    code = run_main(args(tiny_data, tmp_path, '--noval', epochs=3))
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    assert code == f'ERROR: non-finite loss at epoch 1 iteration 0; last good checkpoint kept at {last}'
    ckpt = load(last)
    assert ckpt['epoch'] == 0 and ckpt['optimizer'] is not None  # the epoch-0 checkpoint, not overwritten
    for m in (ckpt['model'], ckpt['ema']):
        assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.slow
def test_pruned_weights_report_sparsity_column(tiny_data, tmp_path, upstream_dir):
    model = attempt_load(upstream_dir / 'yolov5n-v7.0.pt', fuse=False)
    prune(model, 0.3)
    save(make_checkpoint(model), tmp_path / 'pruned.pt')
    assert run_main(args(tiny_data, tmp_path, '--weights', str(tmp_path / 'pruned.pt'), '--noval')) is None
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert header == ['epoch', *RESULTS_COLUMNS, 'sparsity']
    assert 0 <= float(rows[0][-1]) <= 0.3  # no DNS: nothing keeps pruned weights at zero, the column says so


@pytest.mark.slow
def test_sigterm_mid_run_leaves_loadable_last_pt(tiny_data, tmp_path):
    cmd = [sys.executable, str(ROOT / 'train.py'), *args(tiny_data, tmp_path, '--noval', epochs=20)]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    t = time.time()
    while not last.exists() and p.poll() is None and time.time() - t < 120:
        time.sleep(0.2)
    assert last.exists(), p.stderr.read()[-2000:] if p.poll() is not None else 'no last.pt after 120 s'
    p.send_signal(signal.SIGTERM)  # during epoch 1 or later
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert 'Training interrupted at epoch' in err and 'Traceback' not in err
    ckpt = load(last)
    assert ckpt['interrupted']['epoch'] >= 1 and ckpt['optimizer'] is not None
    assert isinstance(attempt_load(last), DetectionModel)
    assert not list(last.parent.glob('.*.tmp'))  # no half-written temp files


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().float() for _, m in prunable_layers(model)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_gloo_with_dns(tiny_data, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           str(ROOT / 'train.py'), *args(tiny_data, tmp_path, '--device', 'cpu', '--noval', '--dns',
                                          '--target-sparsity', '0.3')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [d.name for d in tmp_path.iterdir() if d.is_dir()]
    assert runs == ['exp']  # both ranks used rank 0's run folder
    assert [r[0] for r in read_csv(tmp_path / 'exp' / 'results.csv')[1]] == ['0']
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    assert isinstance(attempt_load(last), DetectionModel)
    w = conv_weights(load(last)['model'])
    assert abs(sum(int((x == 0).sum()) for x in w) / sum(x.numel() for x in w) - 0.3) <= 0.005


@pytest.mark.slow
def test_dns_finetune_hits_target_and_resume_keeps_masks(tiny_data, tmp_path, monkeypatch, upstream_dir):
    """Fine-tune the upstream yolov5n fixture with DNS to 50% sparsity (surgery in epoch 0, then frozen masks),
    interrupted in epoch 1 and resumed: masks survive, saved weights are exactly zero where masked."""
    signal_at(monkeypatch, NB + 1)
    dns_args = ['--weights', str(upstream_dir / 'yolov5n-v7.0.pt'), '--dns', '--target-sparsity', '0.5',
                '--dns-surgery-epochs', '1', '--noautoanchor']
    assert run_main(args(tiny_data, tmp_path, *dns_args, epochs=2)) == 128 + signal.SIGTERM
    last, best = tmp_path / 'exp' / 'weights' / 'last.pt', tmp_path / 'exp' / 'weights' / 'best.pt'
    state = load(last)['dns']
    assert state['frozen'] and state['step'] >= NB

    monkeypatch.undo()
    assert run_main(['--resume', str(last)]) is None
    for f in last, best:
        ckpt = load(f)
        assert ckpt['dns']['frozen'] and (f == best or ckpt['dns']['step'] > state['step'])  # DNS steps went on
        masks = ckpt['dns']['masks']
        assert all(torch.equal(masks[k], state['masks'][k]) for k in masks)  # frozen masks came back unchanged
        model = ckpt['model']
        params = dict(model.named_parameters())
        for name, keep in masks.items():
            assert (params[name][~keep] == 0).all(), name  # masked weights exactly zero in the saved model
        w = conv_weights(model)
        zeros = sum(int((x == 0).sum()) for x in w) / sum(x.numel() for x in w)
        assert abs(zeros - 0.5) <= 0.005, zeros
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert header == ['epoch', *RESULTS_COLUMNS, *DNS_COLUMNS]
    assert [r[0] for r in rows] == ['0', '1']
    assert abs(float(rows[-1][header.index('sparsity')]) - 0.5) <= 0.005
    assert int(rows[0][header.index('dns/pruned')]) > 0


@pytest.mark.slow
def test_dns_zero_surgery_epochs_is_prune_then_fixed_masks(tiny_data, tmp_path, upstream_dir):
    """--dns-surgery-epochs 0: masks cut once from the starting weights (the same zeros as one-shot layer-wise
    prune) and never changed while fine-tuning."""
    fixture = upstream_dir / 'yolov5n-v7.0.pt'
    dns_args = ['--weights', str(fixture), '--dns', '--target-sparsity', '0.4', '--dns-surgery-epochs', '0',
                '--noautoanchor', '--noval']
    assert run_main(args(tiny_data, tmp_path, *dns_args, epochs=1)) is None
    ckpt = load(tmp_path / 'exp' / 'weights' / 'last.pt')
    assert ckpt['dns']['frozen']
    start = attempt_load(fixture, fuse=False)
    prune(start, 0.4)
    expected = {n: p != 0 for n, p in start.named_parameters() if n.endswith('weight') and p.dim() == 4}
    masks = ckpt['dns']['masks']
    assert masks.keys() == expected.keys()
    same = sum(int((masks[k] == expected[k]).sum()) for k in masks) / sum(m.numel() for m in masks.values())
    assert same > 0.999  # identical up to ties between FP16 and FP32 magnitudes
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert int(rows[0][header.index('dns/spliced')]) == 0
