"""Channel pruning from the command line: val.py/detect.py --prune-granularity channel, train.py channel DNS
(one-shot, surgery, interrupt + resume, 2-process gloo DDP) and --slim, on a few images of the embedded set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import detect
import train
import val
from models.experimental import attempt_load
from tests.test_train import (  # noqa: F401 (fixtures shared with test_train)
    args,
    free_port,
    read_csv,
    restore_determinism,
    run_main,
    signal_at,
    tiny_data,
)
from utils.checkpoint import load
from utils.compression.channel.groups import channel_groups
from utils.compression.channel.pruning import prunable_channels

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'


def channels(f: Path) -> int:
    return prunable_channels(channel_groups(attempt_load(f, fuse=False)))


def test_val_channel_pruning_writes_smaller_params(tiny_data, tmp_path):
    common = dict(data=tiny_data, weights=[str(SHIPPED)], imgsz=64, batch_size=4, workers=0, project=tmp_path,
                  plots=False)
    val.run(**common, name='dense')
    val.run(**common, name='ch', prune=0.3, prune_granularity='channel', prune_round=8)
    val.run(**common, name='auto', prune=0.3, prune_granularity='channel', prune_round='auto')
    dense, pruned, auto = (json.loads((tmp_path / n / 'metrics.json').read_text()) for n in ('dense', 'ch', 'auto'))
    assert pruned['prune_granularity'] == 'channel' and pruned['params'] < 0.7 * dense['params']
    assert pruned['sparsity'] == pytest.approx(0.0, abs=1e-3)  # removed, not zeroed
    assert auto['params'] < dense['params']  # rounded to the CPU's kernel width (8 or 16) instead of 8


def test_val_cli_flags_and_errors(capsys):
    opt = val.parse_opt(['--prune', '0.3', '--prune-granularity', 'channel', '--prune-importance', 'bn',
                         '--prune-round', '8'])
    assert (opt.prune_granularity, opt.prune_importance, opt.prune_round) == ('channel', 'bn', 8)
    assert val.parse_opt(['--prune-round', 'auto']).prune_round == 'auto'
    for bad in (['--prune-granularity', 'filter'], ['--prune-round', '0'], ['--prune-importance', 'l2'],
                ['--prune-round', 'fast']):
        with pytest.raises(SystemExit) as e:
            val.parse_opt(bad)
        assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()[-1:]) == 1


def test_val_bn_importance_needs_channel_granularity(tiny_data, tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        val.main(val.parse_opt(['--data', str(tiny_data), '--weights', str(SHIPPED), '--img', '64', '--prune', '0.3',
                                '--prune-importance', 'bn', '--project', str(tmp_path), '--workers', '0']))
    assert e.value.code == 1
    assert 'ERROR: --prune-importance bn needs --prune-granularity channel' in capfd.readouterr().err


def test_detect_channel_pruned_runs(tiny_data, tmp_path):
    src = sorted(Path(l) for l in (tiny_data.parent / 'val.txt').read_text().split())[0]
    r = detect.run(weights=str(SHIPPED), source=src, imgsz=128, project=tmp_path, nosave=True, prune=0.3,
                   prune_granularity='channel', prune_importance='bn')
    assert r.sparsity is not None


@pytest.mark.slow
def test_one_shot_channel_dns_is_prune_then_finetune(tiny_data, tmp_path):
    """--dns-surgery-epochs 0: channels cut once by |gamma| to the target, then fine-tuned; best.pt is shrunk."""
    before = channels(SHIPPED)
    dns = ['--weights', str(SHIPPED), '--dns', '--dns-granularity', 'channel', '--target-sparsity', '0.3',
           '--dns-surgery-epochs', '0', '--noautoanchor']
    assert run_main(args(tiny_data, tmp_path, *dns, epochs=1)) is None
    best = tmp_path / 'exp' / 'weights' / 'best.pt'
    ckpt = load(best)
    assert 'dns' not in ckpt and ckpt['optimizer'] is None
    after = channels(best)
    assert abs(1 - after / before - 0.3) <= 0.01
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert abs(float(rows[-1][header.index('sparsity')]) - 0.3) <= 0.01
    assert int(rows[-1][header.index('dns/spliced')]) == 0
    # fine-tuning the shrunk checkpoint keeps its shape (train.py --weights pruned.pt)
    assert run_main(args(tiny_data, tmp_path, '--weights', str(best), '--noautoanchor', epochs=1)) is None
    assert channels(tmp_path / 'exp2' / 'weights' / 'best.pt') == after


@pytest.mark.slow
def test_channel_dns_interrupt_resume_keeps_masks_then_shrinks(tiny_data, tmp_path, monkeypatch):
    signal_at(monkeypatch, 4)  # epoch 1, after the surgery epoch
    dns = ['--weights', str(SHIPPED), '--dns', '--dns-granularity', 'channel', '--target-sparsity', '0.4',
           '--dns-surgery-epochs', '1', '--dns-scope', 'global', '--noautoanchor', '--slim', '1e-4']
    assert run_main(args(tiny_data, tmp_path, *dns, epochs=2)) == 128 + signal.SIGTERM
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    state = load(last)['dns']
    assert state['granularity'] == 'channel' and state['frozen']
    monkeypatch.undo()
    assert run_main(['--resume', str(last)]) is None
    before = channels(SHIPPED)
    for f in (last, tmp_path / 'exp' / 'weights' / 'best.pt'):
        assert before - channels(f) == sum(int((~k).sum()) for k in state['masks'].values())  # same masks, removed
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert [r[0] for r in rows] == ['0', '1']


@pytest.mark.slow
def test_channel_dns_taylor_resume_mid_surgery(tiny_data, tmp_path, monkeypatch):
    signal_at(monkeypatch, 4)  # epoch 1 of a 3-epoch surgery: masks still move, the model holds dense values
    dns = ['--weights', str(SHIPPED), '--dns', '--dns-granularity', 'channel', '--target-sparsity', '0.3',
           '--dns-surgery-epochs', '3', '--prune-importance', 'taylor', '--noautoanchor']
    assert run_main(args(tiny_data, tmp_path, *dns, epochs=4)) == 128 + signal.SIGTERM
    last = tmp_path / 'exp' / 'weights' / 'last.pt'
    state = load(last)['dns']
    assert not state['frozen'] and state['dense'] and len(state['taylor']) == len(state['masks'])
    assert channels(last) == channels(SHIPPED)  # mid-surgery checkpoints keep every channel (zeroed in the EMA copy)
    monkeypatch.undo()
    assert run_main(['--resume', str(last)]) is None
    final = load(last)
    assert channels(last) < channels(SHIPPED) and 'dns' not in final  # cut, shrunk and released at the end
    header, rows = read_csv(tmp_path / 'exp' / 'results.csv')
    assert [r[0] for r in rows] == ['0', '1', '2', '3'] and 'dns/spliced' in [h.strip() for h in header]


@pytest.mark.slow
def test_ddp_two_processes_gloo_channel_dns(tiny_data, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           str(ROOT / 'train.py'), *args(tiny_data, tmp_path, '--device', 'cpu', '--noval', '--weights', str(SHIPPED),
                                          '--noautoanchor', '--dns', '--dns-granularity', 'channel',
                                          '--target-sparsity', '0.3', '--prune-round', '8',
                                          '--prune-importance', 'taylor')]  # straight-through masks + Taylor hooks
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    best = tmp_path / 'exp' / 'weights' / 'last.pt'
    groups = channel_groups(attempt_load(best, fuse=False))
    assert all(g.channels % 8 == 0 for g in groups if not g.frozen)
    assert channels(best) < 0.75 * channels(SHIPPED)


def test_channel_flags_need_dns_and_granularity(tmp_path):
    for argv, words in ((['--dns-granularity', 'channel'], '--dns-granularity needs --dns'),
                        (['--dns', '--target-sparsity', '0.3', '--prune-round', '8'],
                         '--prune-round needs --dns-granularity channel')):
        opt = train.parse_opt(argv)
        with pytest.raises(train.TrainingError, match=words):
            train.check_dns_opt(opt)
    with pytest.raises(SystemExit) as e:
        train.parse_opt(['--slim', '-1'])
    assert e.value.code == 2
