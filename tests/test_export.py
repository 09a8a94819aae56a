"""export.py and running the exported file (models/backend.py) in val.py and detect.py.

The shipped model (data/weights/yolov5n-shapes.pt, copied to a tmp folder) is exported at 128-256 px; val.py on the
.onnx must give the .pt numbers (within 0.002) on a subset of the embedded set, detect.py the same boxes.
"""
from __future__ import annotations

import ast
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detect
import export
import val
from models.backend import OnnxModel, parse_metadata
from models.experimental import attempt_load, prepare_model
from tests.conftest import ROOT, shapes_subset
from utils.checkpoint import CheckpointError, load, make_checkpoint, save
from utils.compression.weight.magnitude import prune, sparsity
from utils.data_yaml import check_dataset
from utils.dataloaders import create_dataloader

SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'
NAMES = {0: 'circle', 1: 'rectangle', 2: 'triangle'}


def export_to(folder: Path, *args: str, weights: Path = SHIPPED) -> Path:
    """Copy ``weights`` into ``folder``, run export.py on the copy with ``args``; returns the .onnx path."""
    folder.mkdir(parents=True, exist_ok=True)
    w = folder / weights.name
    if w != weights:
        shutil.copy(weights, w)
    files = export.main(export.parse_opt(['--weights', str(w), *args]))
    assert files == [str(w.with_suffix('.onnx'))]  # next to the weights, upstream's name
    return w.with_suffix('.onnx')


def metrics(data: Path, weights: Path, imgsz: int, project: Path, **kw) -> np.ndarray:
    """P, R, mAP50, mAP50-95 of val.run."""
    r, _, _ = val.run(data=data, weights=[str(weights)], imgsz=imgsz, batch_size=8, device='cpu', workers=0,
                      plots=False, project=project, **kw)
    return np.array(r[:4])


@pytest.fixture(scope='module')
def dynamic_onnx(tmp_path_factory) -> Path:
    return export_to(tmp_path_factory.mktemp('dynamic'), '--img', '256', '--dynamic', '--include', 'onnx')


@pytest.fixture(scope='module')
def static_onnx(tmp_path_factory) -> Path:
    """Fixed shape (2, 3, 128, 128), simplified."""
    return export_to(tmp_path_factory.mktemp('static'), '--img', '128', '--batch-size', '2', '--simplify')


@pytest.fixture(scope='module')
def data12(tmp_path_factory) -> Path:
    return shapes_subset(tmp_path_factory.mktemp('shapes12'), 1, 12)


@pytest.fixture(scope='module')
def model_pt() -> torch.nn.Module:
    return prepare_model(attempt_load(SHIPPED, fuse=False), 'cpu')[0]


# ---------------------------------------------------------------------------------------------- the file
@pytest.mark.onnx
def test_graph_metadata_and_standard_ops(dynamic_onnx, static_onnx):
    import onnx

    for f in (dynamic_onnx, static_onnx):
        m = onnx.load(str(f))
        onnx.checker.check_model(m, full_check=True)
        assert [i.name for i in m.graph.input] == ['images'] and [o.name for o in m.graph.output] == ['output0']
        assert {n.domain for n in m.graph.node} <= {'', 'ai.onnx'}  # standard ops only: no custom domains
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta == {'stride': '32', 'names': str(NAMES)}  # upstream's format: str(int), str(dict)
        assert ast.literal_eval(meta['names']) == NAMES
        dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        assert dims[2] == 8  # 5 + nc
    static = onnx.load(str(static_onnx))
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 128, 128]
    n = 3 * (16 ** 2 + 8 ** 2 + 4 ** 2)  # 3 anchors on the 16x16, 8x8 and 4x4 grids of 128 px
    assert [d.dim_value for d in static.graph.output[0].type.tensor_type.shape.dim] == [2, n, 8]


@pytest.mark.onnx
def test_onnxruntime_loads_without_warnings(dynamic_onnx, static_onnx):
    """No warning or error (unknown ops, unused inputs...) from ONNX Runtime while building the sessions."""
    code = ('import onnxruntime as ort, sys\nso = ort.SessionOptions()\nso.log_severity_level = 1\n'
            'for f in sys.argv[1:]:\n    ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])\n')
    p = subprocess.run([sys.executable, '-c', code, str(dynamic_onnx), str(static_onnx)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bad = [x for x in (p.stdout + p.stderr).splitlines() if '[W:' in x or '[E:' in x or 'Warning' in x]
    assert not bad, bad[:5]


@pytest.mark.onnx
def test_dynamic_export_runs_at_other_batch_and_image_sizes(dynamic_onnx, model_pt):
    m = OnnxModel(dynamic_onnx)
    assert m.input_shape == (None, None, None) and m.fixed_imgsz() is None
    assert (m.nc, m.names, int(m.stride)) == (3, NAMES, 32)
    torch.manual_seed(0)
    for shape in ((1, 3, 256, 256), (3, 3, 320, 192), (2, 3, 64, 128)):
        im = torch.rand(shape)
        y, extra = m(im)
        with torch.no_grad():
            ref = model_pt(im)[0]
        assert extra is None and y.shape == ref.shape == (shape[0], 3 * sum((shape[2] // s) * (shape[3] // s)
                                                                             for s in (8, 16, 32)), 8)
        torch.testing.assert_close(y, ref, atol=2e-3, rtol=1e-4)  # pixels / scores


@pytest.mark.onnx
def test_static_export_batches_in_chunks_and_refuses_other_sizes(static_onnx, model_pt):
    m = OnnxModel(static_onnx)
    assert m.input_shape == (2, 128, 128) and m.fixed_imgsz() == (128, 128)
    im = torch.rand(3, 3, 128, 128)  # 3 images through a batch-2 graph: chunks of 2, the last zero-padded
    with torch.no_grad():
        ref = model_pt(im)[0]
    torch.testing.assert_close(m(im)[0], ref, atol=2e-3, rtol=1e-4)
    with pytest.raises(ValueError, match=r'exported for \(128, 128\).*--dynamic'):
        m(torch.rand(2, 3, 160, 128))


def test_metadata_parsing():
    assert parse_metadata({'stride': '32', 'names': "{0: 'a', 1: 'b'}"}) == (32, {0: 'a', 1: 'b'})
    assert parse_metadata({'stride': '16', 'names': "['a', 'b']"}) == (16, {0: 'a', 1: 'b'})
    assert parse_metadata({'names': "__import__('os').system('echo no')"}) == (None, None)  # literals only
    assert parse_metadata({}) == (None, None)


# ---------------------------------------------------------------------------------------------- val / detect
@pytest.mark.slow
@pytest.mark.onnx
def test_val_onnx_gives_pt_numbers(dynamic_onnx, data12, tmp_path):
    pt = metrics(data12, dynamic_onnx.with_suffix('.pt'), 256, tmp_path)
    ox = metrics(data12, dynamic_onnx, 256, tmp_path)
    assert pt[2] > 0.5  # the shipped model finds the shapes
    np.testing.assert_allclose(ox, pt, atol=0.002)
    dnn = metrics(data12, dynamic_onnx, 256, tmp_path, dnn=True)  # OpenCV DNN runs the same file
    np.testing.assert_allclose(dnn, pt, atol=0.002)


@pytest.mark.slow
@pytest.mark.onnx
def test_val_static_onnx_runs_square_at_its_size(static_onnx, data12, model_pt, tmp_path, caplog):
    """A fixed-shape export is run letterboxed at its size (not rect batches, not --imgsz), like upstream; numbers
    equal the .pt model's on the same square batches."""
    caplog.set_level(logging.INFO, logger='yolov5')
    ox = metrics(data12, static_onnx, 320, tmp_path, name='static')
    assert 'fixed input shape: running letterboxed 128x128' in caplog.text
    assert '"imgsz": 128' in (tmp_path / 'static' / 'metrics.json').read_text()
    data = check_dataset(data12)
    loader = create_dataloader(data['val'], 128, 8, 32, pad=0.0, rect=False, workers=0)[0]
    r, _, _ = val.run(data=data, model=model_pt, dataloader=loader, save_dir=tmp_path / 'pt', plots=False)
    np.testing.assert_allclose(ox, np.array(r[:4]), atol=0.002)


@pytest.mark.slow
@pytest.mark.onnx
def test_detect_onnx_draws_the_same_boxes(dynamic_onnx, static_onnx, tmp_path):
    runs = {}
    for w in (dynamic_onnx.with_suffix('.pt'), dynamic_onnx, static_onnx):
        runs[w] = detect.run(weights=w, source=ROOT / 'data' / 'images', imgsz=256, device='cpu', save_txt=True,
                             project=tmp_path, name=w.parent.name + w.suffix)
    pt, dyn, st = runs.values()
    assert sum(len(d.boxes) for d in pt.detections) >= 6 and dyn.names == pt.names == NAMES
    for a, b in zip(pt.detections, dyn.detections):
        assert a.path == b.path and a.boxes.shape == b.boxes.shape
        torch.testing.assert_close(b.boxes, a.boxes, atol=1.0, rtol=0)  # rounded pixel boxes, classes, conf
        txt = f'labels/{Path(a.path).stem}.txt'
        assert (pt.save_dir / txt).read_text() == (dyn.save_dir / txt).read_text()
    assert [len(d.boxes) > 0 for d in st.detections] == [True] * 3  # the 128 px static export also finds shapes


# ---------------------------------------------------------------------------------------------- sparse models
@pytest.mark.slow
@pytest.mark.onnx
def test_sparse_compact_checkpoint_exports_with_its_zeros(tmp_path, data12):
    """Unstructured 50 % zeros (val.py --prune's cut), saved in the compact sparse form: the ONNX file holds the
    same zeros (dense tensors) and val.py gives the .pt numbers."""
    model = attempt_load(SHIPPED, fuse=False)
    prune(model, 0.5, 'global')
    f = tmp_path / 'pruned.pt'
    save(make_checkpoint(model), f, compact=True)
    onnx_file = export_to(tmp_path, '--img', '128', '--dynamic', weights=f)
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(onnx_file)).graph.initializer if t.dims and
               len(t.dims) == 4]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zeros - 0.5) < 0.02  # fused conv weights keep the zeros
    np.testing.assert_allclose(metrics(data12, onnx_file, 128, tmp_path), metrics(data12, f, 128, tmp_path),
                               atol=0.002)


@pytest.mark.slow
@pytest.mark.onnx
def test_channel_pruned_checkpoint_exports_smaller_graph(tmp_path, data12):
    """A channel-pruned checkpoint (utils/compression/channel/pruning.py, 30 % of the channels removed) is an ordinary smaller
    model: its ONNX file has fewer weights and val.py gives the .pt numbers."""
    import onnx
    from onnx import numpy_helper

    from utils.compression.channel.pruning import prune_channels

    model = attempt_load(SHIPPED, fuse=False)
    prune_channels(model, 0.3)
    f = tmp_path / 'channels30.pt'
    save(make_checkpoint(model), f)
    onnx_file = export_to(tmp_path, '--img', '128', '--dynamic', weights=f)
    dense_file = export_to(tmp_path / 'dense', '--img', '128', '--dynamic')

    def n_weights(file: Path) -> int:
        return sum(numpy_helper.to_array(t).size for t in onnx.load(str(file)).graph.initializer)

    assert n_weights(onnx_file) < 0.7 * n_weights(dense_file)
    np.testing.assert_allclose(metrics(data12, onnx_file, 128, tmp_path), metrics(data12, f, 128, tmp_path),
                               atol=0.002)


@pytest.mark.slow
@pytest.mark.onnx
def test_dns_trained_model_exports(tmp_path):
    """One epoch of DNS fine-tuning of the shipped model (50 % target), then export -> val.py gives the .pt numbers
    and detect.py the same boxes."""
    import train

    data = shapes_subset(tmp_path, 8, 8)
    train.main(train.parse_opt(['--weights', str(SHIPPED), '--data', str(data), '--imgsz', '64', '--batch-size', '8',
                                '--epochs', '1', '--dns', '--target-sparsity', '0.5', '--workers', '0', '--noplots',
                                '--noautoanchor', '--project', str(tmp_path / 'train')]))
    best = tmp_path / 'train' / 'exp' / 'weights' / 'best.pt'
    assert 'dns' in load(best) and abs(float(sparsity(attempt_load(best, fuse=False))) - 0.5) < 0.01
    onnx_file = export_to(tmp_path / 'export', '--img', '128', '--dynamic', weights=best)
    pt = metrics(data, onnx_file.with_suffix('.pt'), 128, tmp_path)
    assert pt[2] > 0.05  # still a detector
    np.testing.assert_allclose(metrics(data, onnx_file, 128, tmp_path), pt, atol=0.002)
    a, b = (detect.run(weights=w, source=ROOT / 'data' / 'images', imgsz=128, conf_thres=0.1, device='cpu',
                       nosave=True, project=tmp_path, name='detect') for w in (onnx_file.with_suffix('.pt'), onnx_file))
    for da, db in zip(a.detections, b.detections):
        torch.testing.assert_close(db.boxes, da.boxes, atol=1.0, rtol=0)


# ---------------------------------------------------------------------------------------------- errors, flags
@pytest.mark.onnx
def test_not_an_onnx_file_is_one_line_error(tmp_path, data12):
    bad = tmp_path / 'model.onnx'
    bad.write_bytes(b'this is not a protobuf \x00\x01' * 20)
    with pytest.raises(CheckpointError, match='is not a valid ONNX model') as e:
        OnnxModel(bad)
    assert '\n' not in str(e.value)
    with pytest.raises(SystemExit) as e:
        detect.main(detect.parse_opt(['--weights', str(bad), '--source', str(ROOT / 'data' / 'images'),
                                      '--project', str(tmp_path)]))
    assert str(e.value.code).startswith('ERROR: ') and 'model.onnx' in str(e.value.code) and '\n' not in e.value.code
    p = subprocess.run([sys.executable, 'val.py', '--weights', str(bad), '--data', str(data12), '--project',
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [x for x in p.stderr.splitlines() if x.startswith('ERROR:')]
    assert p.returncode == 1 and len(errors) == 1 and 'Traceback' not in p.stderr, p.stderr[-2000:]


@pytest.mark.onnx
def test_class_count_mismatch_is_one_line_error(dynamic_onnx, tmp_path):
    data = shapes_subset(tmp_path, 1, 4)
    data.write_text(data.read_text().replace('names: {0: circle, 1: rectangle, 2: triangle}', 'names: {0: a, 1: b}'))
    with pytest.raises(ValueError, match=r'has 3 classes but the --data you passed .* has 2;'):
        val.run(data=data, weights=[str(dynamic_onnx)], imgsz=64, device='cpu', workers=0, project=tmp_path)


@pytest.mark.parametrize('args, words', [
    (['--include', 'engine'], '--include engine is not supported: this project exports ONNX (--include onnx), OpenVINO'),
    (['--include', 'onnx', 'tflite'], '--include tflite is not supported'),
    (['--include', 'foo'], 'invalid --include foo'),
    (['--weights', 'x.onnx'], 'is already an ONNX file'),
    pytest.param(['--weights', 'missing.pt'], 'missing.pt', marks=pytest.mark.onnx),  # onnx is checked first
])
def test_export_user_errors_are_one_line(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        export.main(export.parse_opt(args))
    assert str(e.value.code).startswith('ERROR: ') and words in e.value.code and '\n' not in e.value.code


@pytest.mark.onnx
def test_prune_or_ensemble_of_onnx_refused(dynamic_onnx, data12, tmp_path):
    with pytest.raises(ValueError, match='--prune works on .pt weights'):
        val.run(data=data12, weights=[str(dynamic_onnx)], imgsz=64, device='cpu', workers=0, prune=0.3,
                project=tmp_path)
    with pytest.raises(ValueError, match='one model at a time'):
        val.run(data=data12, weights=[str(dynamic_onnx)] * 2, imgsz=64, device='cpu', workers=0, project=tmp_path)


def test_missing_packages_give_the_install_line(tmp_path, monkeypatch):
    """Runs with or without the packages: the import fails before the file is read."""
    f = tmp_path / 'model.onnx'
    f.write_bytes(b'not read')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import raises ImportError
    with pytest.raises(CheckpointError, match='pip install onnx onnxruntime'):
        OnnxModel(f)
    monkeypatch.setitem(sys.modules, 'onnx', None)
    with pytest.raises(SystemExit) as e:
        export_to(tmp_path, '--img', '64')
    assert 'needs the optional package onnx: pip install onnx onnxruntime' in e.value.code


def test_onnx_packages_are_imported_lazily():
    code = ('import sys, val, detect, export, train, compare\n'
            'print([m for m in ("onnx", "onnxruntime") if m in sys.modules])\n')
    p = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == '[]', p.stderr[-2000:]


def test_defaults_and_flags_follow_upstream():
    opt = export.parse_opt([])
    assert (opt.imgsz, opt.batch_size, opt.device, opt.include) == ([640, 640], 1, 'cpu', ['onnx'])
    assert opt.opset is None and export.resolve_opset(None, int8=False) == 12  # upstream v7.0's default
    assert export.resolve_opset(None, int8=True) == 17 and export.resolve_opset(13, int8=True) == 13
    for flag in ('--keras', '--optimize', '--int8', '--verbose', '--nms', '--agnostic-nms'):  # upstream names parse
        assert export.parse_opt([flag])
    opt = export.parse_opt(['--img', '320', '--workspace', '8', '--topk-all', '50', '--iou-thres', '0.5'])
    assert opt.imgsz == [320] and opt.workspace == 8
