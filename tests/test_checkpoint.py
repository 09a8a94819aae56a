"""Checkpoints: upstream fixtures load safely and match their reference outputs; malicious pickles are refused."""
from __future__ import annotations

import os

import pytest
import torch

from models.experimental import attempt_load
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, load, make_checkpoint, save, strip_optimizer

FIXTURES = ['yolov5s-v5.0', 'yolov5n-v6.2', 'yolov5n-v7.0']


@pytest.mark.parametrize('name', FIXTURES)
@pytest.mark.parametrize('fuse', [False, True])
def test_upstream_fixture_matches_reference(upstream_dir, name, fuse):
    ref = torch.load(upstream_dir / f'{name}.ref.pt')
    model = attempt_load(upstream_dir / f'{name}.pt', fuse=fuse)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    with torch.no_grad():
        y = model(ref['input'])[0]
    assert y.shape == ref['output'].shape
    assert (y[..., :4] - ref['output'][..., :4]).abs().max() < 1e-2  # pixels
    assert (y[..., 4:] - ref['output'][..., 4:]).abs().max() < 1e-4  # scores
    assert isinstance(model.names, dict)


def test_v5_anchor_grid_buffer_dropped(upstream_dir):
    model = attempt_load(upstream_dir / 'yolov5s-v5.0.pt', fuse=False)
    det = model.model[-1]
    assert 'anchor_grid' not in det._buffers and isinstance(det.anchor_grid, list)


def test_v7_names(upstream_dir):
    model = attempt_load(upstream_dir / 'yolov5n-v7.0.pt')
    assert model.names == {0: 'circle', 1: 'rectangle', 2: 'triangle'}


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize('fn,arg,name', [(os.system, 'touch {marker}', 'system'), (eval, "open('{marker}', 'w')", 'builtins.eval')])
def test_malicious_pickle_refused(tmp_path, fn, arg, name):
    marker = tmp_path / 'pwned'
    f = tmp_path / 'evil.pt'
    torch.save({'model': _Evil(fn, arg.format(marker=marker))}, f)
    with pytest.raises(CheckpointError, match=name) as e:
        load(f)
    assert '\n' not in str(e.value)
    assert not marker.exists()


def test_unknown_class_refused(tmp_path):
    f = tmp_path / 'x.pt'
    torch.save({'model': torch.nn.GRU(2, 2)}, f)  # a real torch class, but not one a YOLOv5 checkpoint uses
    with pytest.raises(CheckpointError, match='GRU'):
        load(f)


def test_corrupt_and_missing(tmp_path):
    f = tmp_path / 'bad.pt'
    f.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError):
        load(f)
    with pytest.raises(CheckpointError, match='not found'):
        load(tmp_path / 'missing.pt')


def test_save_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DetectionModel('yolov5n.yaml', nc=3)
    model.names = {0: 'a', 1: 'b', 2: 'c'}
    f = tmp_path / 'weights' / 'last.pt'
    save(make_checkpoint(model, ema=model, epoch=3, best_fitness=0.5, opt={'imgsz': 64}, dns={'x': 1}), f)
    ck = load(f)
    assert set(ck) >= {'model', 'ema', 'epoch', 'best_fitness', 'updates', 'optimizer', 'opt', 'git', 'date', 'dns'}
    assert next(ck['model'].parameters()).dtype == torch.float16
    assert type(ck['model']).__module__ == 'models.yolo' and type(ck['model']).__name__ == 'DetectionModel'
    x = torch.rand(1, 3, 64, 64)
    ref = model.half().float().eval()
    loaded = attempt_load(f, fuse=False)
    with torch.no_grad():
        assert torch.equal(ref(x)[0], loaded(x)[0])
    assert strip_optimizer(f) > 0
    ck = load(f)
    assert ck['epoch'] == -1 and ck['optimizer'] is None and ck['ema'] is None


def test_atomic_save_keeps_old_file(tmp_path):
    f = tmp_path / 'last.pt'
    save({'epoch': 1}, f)

    class Boom:
        def __reduce__(self):
            raise RuntimeError('interrupted')

    with pytest.raises(Exception):
        save({'epoch': 2, 'x': Boom()}, f)
    assert load(f)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


@pytest.mark.parametrize('amount', [0.5, 0.9])
def test_compact_round_trip_bit_exact(tmp_path, amount):
    from utils.compression.weight.magnitude import prune
    torch.manual_seed(0)
    model = DetectionModel('yolov5n.yaml', nc=3)
    prune(model, amount)
    ck = make_checkpoint(model, ema=model, epoch=-1)
    dense, compact = tmp_path / 'dense.pt', tmp_path / 'compact.pt'
    save(ck, dense)
    save(ck, compact, compact=True)
    ratio = compact.stat().st_size / dense.stat().st_size
    assert ratio < (0.6 if amount == 0.5 else 0.2)
    a, b = load(dense), load(compact)
    assert 'sparse_weights' not in b
    for key in ('model', 'ema'):
        sa, sb = a[key].state_dict(), b[key].state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k].view(-1).view(torch.uint8) if sa[k].is_floating_point() else sa[k],
                                                              sb[k].view(-1).view(torch.uint8) if sb[k].is_floating_point() else sb[k]), k
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(attempt_load(dense)(x)[0], attempt_load(compact)(x)[0])
