"""val.py: metrics of the upstream-trained fixture on the embedded shapes set, pycocotools agreement, pruning,
the sparsity sweep, the train.py call path (live model + dataloader) and CLI errors.

Small val subsets of the embedded set (copied into tmp folders, with the full set's COCO json) keep it fast.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import val
from utils import model_loading
from utils.model_loading import default_data
from tests.conftest import ROOT
from utils.data_yaml import check_dataset
from utils.dataloaders import create_dataloader
from utils.general import set_logging

NAMES = {0: 'circle', 1: 'rectangle', 2: 'triangle'}


@pytest.fixture(scope='module')
def weights(upstream_dir) -> Path:
    return upstream_dir / 'yolov5n-v7.0.pt'


def make_subset(root: Path, n: int) -> Path:
    """A data yaml over the first n val images of the embedded set (labels copied, the set's COCO json)."""
    shapes = check_dataset(ROOT / 'data' / 'shapes.yaml')  # generates the set on first use
    src = Path(shapes['path'])
    for sub in ('images', 'labels'):
        (root / sub / 'val').mkdir(parents=True, exist_ok=True)
    for im in sorted((src / 'images' / 'val').glob('*.jpg'))[:n]:
        shutil.copy(im, root / 'images' / 'val' / im.name)
        shutil.copy(src / 'labels' / 'val' / f'{im.stem}.txt', root / 'labels' / 'val' / f'{im.stem}.txt')
    f = root / 'data.yaml'
    f.write_text(f'path: {root}\ntrain: images/val\nval: images/val\ncoco_json: {shapes["coco_json"]}\n'
                 f'names: {NAMES}\n')
    return f


@pytest.fixture(scope='module')
def small(tmp_path_factory) -> Path:
    """8 images: for the cheap paths."""
    return make_subset(tmp_path_factory.mktemp('shapes8'), 8)


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory, weights):
    """One full-featured evaluation of the fixture on 32 images at 256 px (json, txt, plots)."""
    set_logging()
    data = make_subset(tmp_path_factory.mktemp('shapes32'), 32)
    project = tmp_path_factory.mktemp('runs')
    out = val.run(data=data, weights=[str(weights)], imgsz=256, batch_size=16, device='cpu', workers=0,
                  save_json=True, save_txt=True, save_conf=True, project=project)
    return out, project / 'exp'


def test_trained_fixture_metrics(evaluated):
    """The upstream fixture (trained on shapes at 256 px) finds the shapes.

    Measured on these 32 images (CPU, FP32): P 0.629, R 0.718, mAP50 0.685, mAP50-95 0.508 (pycocotools AP 0.507,
    AP50 0.683, AR@100 0.725); on all 100 val images: P 0.674, R 0.829, mAP50 0.715, mAP50-95 0.540 (pycocotools
    AP 0.539, AP50 0.713, AR@100 0.766).
    """
    (mp, mr, map50, map5095, *losses), maps, t = evaluated[0]
    m = json.loads((evaluated[1] / 'metrics.json').read_text())
    assert m['mAP50'] > 0.55 and m['mAP50-95'] > 0.4
    assert 0.4 < mp <= 1 and 0.6 < mr <= 1
    assert losses == [0.0, 0.0, 0.0] and len(t) == 3 and all(x > 0 for x in t)
    assert maps.shape == (3,) and (maps > 0.3).all()
    assert m['images'] == 32 and m['instances'] > 32 and m['precision'] == 'fp32' and m['sparsity'] < 1e-5
    assert set(m['classes']) == set(NAMES.values())


def test_pycocotools_agrees_with_internal_map(evaluated):
    """Same boxes, two AP implementations: they differ only by definitions (101-point sampling + upstream's
    end-of-curve sentinel, matching order); measured |coco AP - mAP50-95| = 0.0008 here (0.001 on all 100 images),
    |coco AP50 - mAP50| = 0.002; the bound leaves room for other torch builds."""
    (mp, mr, map50, map5095, *_), _, _ = evaluated[0]
    save_dir = evaluated[1]
    m = json.loads((save_dir / 'metrics.json').read_text())
    assert m['coco_AP'] is not None and len(m['coco_stats']) == 12
    assert abs(m['coco_AP'] - m['mAP50-95']) < 0.02
    assert abs(m['coco_AP50'] - m['mAP50']) < 0.02
    assert 0.5 < m['coco_AR100'] <= 1
    assert (map50, map5095) == (m['coco_AP50'], m['coco_AP'])  # the returned tuple reports pycocotools' values
    preds = json.loads((save_dir / 'yolov5n-v7.0_predictions.json').read_text())
    assert preds and set(preds[0]) == {'image_id', 'category_id', 'bbox', 'score'}
    assert {p['category_id'] for p in preds} <= {0, 1, 2} and all(isinstance(p['image_id'], int) for p in preds)


def test_outputs_written(evaluated):
    save_dir = evaluated[1]
    for f in ('confusion_matrix.png', 'PR_curve.png', 'F1_curve.png', 'P_curve.png', 'R_curve.png',
              'val_batch0_labels.jpg', 'val_batch0_pred.jpg', 'val_batch1_pred.jpg'):
        assert (save_dir / f).stat().st_size > 0, f
    assert not (save_dir / 'val_batch2_pred.jpg').exists()  # 32 images / batch 16 = 2 batches
    txt = sorted((save_dir / 'labels').glob('*.txt'))
    assert len(txt) == 32
    rows = np.loadtxt(txt[0], ndmin=2)
    assert rows.shape[1] == 6 and ((rows[:, 1:5] >= 0) & (rows[:, 1:5] <= 1)).all()  # cls xywhn conf


@pytest.mark.slow
def test_cli_prune_half_and_metrics(small, weights, tmp_path):
    """--prune 0.3 zeroes 30% of every Conv2d weight; --half on CPU is one info line and FP32."""
    cmd = [sys.executable, 'val.py', '--weights', str(weights), '--data', str(small), '--prune', '0.3',
           '--imgsz', '128', '--batch-size', '8', '--device', 'cpu', '--workers', '0', '--half',
           '--project', str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert 'sparsity 30.0% of prunable weights (1,758,400 in 60 Conv2d layers)' in out
    assert out.count('--half is only supported on CUDA, using FP32') == 1
    assert 'Speed: ' in out and 'per image at shape (8, 3, 128, 128)' in out
    m = json.loads((tmp_path / 'exp' / 'metrics.json').read_text())
    assert m['sparsity'] == pytest.approx(0.30, abs=1e-3) and m['prune'] == 0.3 and m['precision'] == 'fp32'


def test_prune_argument_error(capsys):
    with pytest.raises(SystemExit) as e:
        val.parse_opt(['--prune', '1.5'])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('val.py: error: argument --prune: 1.5') or 'error: argument --prune: 1.5' in last
    for bad in (['--prune', '-0.1'], ['--prune', '1'], ['--conf-thres', '2'], ['--task', 'bogus'], ['--imgsz', '0']):
        with pytest.raises(SystemExit):
            val.parse_opt(bad)
    assert val.parse_opt(['--prune', '0.5', '--prune-scope', 'global']).prune == 0.5


@pytest.mark.slow
def test_cli_missing_weights_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, 'val.py', '--weights', str(tmp_path / 'nope.pt'), '--project', str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    errors = [x for x in p.stderr.splitlines() if x.startswith('ERROR:')]
    assert len(errors) == 1 and 'nope.pt' in errors[0] and 'Traceback' not in p.stderr
    assert not (tmp_path / 'exp').exists()  # nothing made before the weights load


def test_nc_mismatch_is_one_line_error(upstream_dir, small):
    with pytest.raises(ValueError, match=r'yolov5n-v6.2.pt has 80 classes but the --data you passed \(.*data.yaml\) '
                                         r'has 3;'):
        val.run(data=small, weights=str(upstream_dir / 'yolov5n-v6.2.pt'), imgsz=64, device='cpu')


def test_sparsity_sweep_files(small, weights, tmp_path):
    """Each (scope, amount) starts from a fresh copy: sparsity equals the amount, never accumulates."""
    save_dir, rows = val.sparsity_sweep(data=small, weights=[str(weights)], imgsz=64, batch_size=8, device='cpu',
                                        workers=0, project=tmp_path, amounts=[0.0, 0.5])
    assert save_dir == tmp_path / 'exp'
    with open(save_dir / 'sparsity.csv') as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == ('weights', 'scope', 'amount', 'sparsity_prunable', 'sparsity_all', 'P', 'R', 'mAP50',
                               'mAP50-95')
    assert [(r['scope'], float(r['amount'])) for r in table] == [('layer', 0), ('layer', 0.5), ('global', 0),
                                                                  ('global', 0.5)]
    for r in table:
        assert float(r['sparsity_prunable']) == pytest.approx(float(r['amount']), abs=1e-3)
        assert float(r['sparsity_all']) <= float(r['sparsity_prunable']) + 1e-6
    assert table[0]['mAP50'] == table[2]['mAP50']  # amount 0 is the same dense model for both scopes
    assert float(table[0]['mAP50-95']) > float(table[1]['mAP50-95'])  # 50% layer-wise pruning hurts
    # global 50% pruning of a model already pruned 50% layer-wise would zero exactly the same weights: different
    # numbers show that the global row started from the dense weights (measured: mAP50 0.125 layer, 0.261 global)
    assert table[1]['mAP50'] != table[3]['mAP50']
    md = (save_dir / 'sparsity.md').read_text().splitlines()
    assert len(md) == 2 + 4 and 'mAP50-95' in md[0]
    png = (save_dir / 'sparsity.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'


def test_live_model_and_dataloader_path(small, weights, tmp_path):
    """train.py's call: model on its device, its dataloader and compute_loss; returns upstream's tuple shapes."""
    from models.experimental import attempt_load
    from utils.loss import ComputeLoss

    model = attempt_load(weights, fuse=False)
    model.hyp = dict(box=0.05, obj=1.0, cls=0.5, anchor_t=4.0, cls_pw=1.0, obj_pw=1.0, fl_gamma=0.0,
                     label_smoothing=0.0)
    data = check_dataset(small)
    loader = create_dataloader(data['val'], 64, 8, 32, pad=0.5, rect=True, workers=0)[0]
    results, maps, t = val.run(data=data, model=model, dataloader=loader, save_dir=tmp_path, plots=False, half=True,
                               compute_loss=ComputeLoss(model))
    assert len(results) == 7 and maps.shape == (3,) and len(t) == 3
    assert all(np.isfinite(results)) and all(x > 0 for x in results[4:])  # box, obj, cls val losses
    assert next(model.parameters()).dtype == torch.float32  # back to FP32 for training
    assert list(tmp_path.iterdir()) == []  # no metrics.json / plots in the training path with plots=False


def test_ensemble_of_identical_models_equals_single(small, weights, tmp_path):
    """Duplicated predictions are removed by NMS: an ensemble of one model twice scores like the model."""
    kw = dict(data=small, imgsz=64, batch_size=8, device='cpu', workers=0, plots=False, project=tmp_path)
    single, _, _ = val.run(weights=[str(weights)], **kw)
    double, _, _ = val.run(weights=[str(weights), str(weights)], **kw)
    assert np.allclose(single[:4], double[:4], atol=1e-6)


def test_random_init_fallback(small, tmp_path, monkeypatch):
    monkeypatch.setattr(model_loading, 'DEFAULT_WEIGHTS', tmp_path / 'missing.pt')
    (mp, mr, map50, map5095, *_), maps, _ = val.run(data=small, imgsz=64, device='cpu', workers=0, plots=False,
                                                    project=tmp_path)
    assert 0 <= map50 < 0.05 and maps.shape == (3,)
    m = json.loads((tmp_path / 'exp' / 'metrics.json').read_text())
    assert m['weights'] == ['random-init yolov5n.yaml']


# ------------------------------------------------------------------------------------------------ default --data
def save_ckpt(model, file: Path, opt: dict | None = None) -> Path:
    from utils.checkpoint import make_checkpoint, save
    save(make_checkpoint(model, opt=opt), file)
    return file


def test_default_data_follows_the_weights(weights, upstream_dir, tmp_path, monkeypatch):
    from models.experimental import attempt_load
    assert val.parse_opt([]).data is None  # resolved in main(), after the weights are known
    monkeypatch.setattr(model_loading, 'DEFAULT_WEIGHTS', tmp_path / 'missing.pt')
    shapes = str(ROOT / 'data' / 'shapes.yaml')
    assert default_data([]) == (shapes, '--data not given and no weights: the embedded set')
    # the fixture records data/shapes3.yaml, which is not here: its class names pick the embedded set
    assert default_data([str(weights)]) == (shapes, "--data not given: yolov5n-v7.0.pt predicts the embedded "
                                                        "set's classes")
    mine = tmp_path / 'mine.yaml'
    mine.write_text(f'path: {tmp_path}\ntrain: images\nval: images\nnames: {NAMES}\n')
    model = attempt_load(weights, fuse=False)
    f = save_ckpt(model, tmp_path / 'trained.pt', opt={'data': str(mine), 'epochs': 3})
    assert default_data([str(f)]) == (str(mine), '--data not given: the data set trained.pt was trained on '
                                                     '(its checkpoint records it)')
    mine.write_text(f'path: {tmp_path}\ntrain: images\nval: images\nnames: [x, y, z]\n')  # not the model's classes
    assert default_data([str(f)])[0] == shapes
    # 80 classes named class0..79 (not COCO's), no data recorded: the default disagrees, and the message says so
    with pytest.raises(ValueError) as e:
        default_data([str(upstream_dir / 'yolov5n-v6.2.pt')])
    msg = str(e.value)
    assert msg.startswith('yolov5n-v6.2.pt has 80 classes but the default --data data/shapes.yaml has 3 (the embedded '
                          "set: yolov5n-v6.2.pt records no data set with its classes found here and they are not "
                          "COCO's)")
    assert 'you passed' not in msg and '\n' not in msg
    assert default_data([str(upstream_dir / 'yolov5n-v6.2.pt')], single_cls=True)[0] == shapes


def test_cli_default_data_mismatch_one_line(upstream_dir, capsys):
    with pytest.raises(SystemExit) as e:
        val.main(val.parse_opt(['--weights', str(upstream_dir / 'yolov5n-v6.2.pt')]))
    assert e.value.code == 1
    out = capsys.readouterr()
    errors = [x for x in (out.out + out.err).splitlines() if x.startswith('ERROR:')]
    assert len(errors) == 1 and 'the default --data data/shapes.yaml has 3' in errors[0], out


@pytest.mark.slow
def test_mission_command_offline_one_error_line(tmp_path):
    """`python val.py --weights yolov5x.pt --prune 0.3 --half` on a fresh clone without network: one ERROR line."""
    env = {**os.environ, 'YOLOV5_ASSETS_URL': 'http://127.0.0.1:9'}  # nothing listens on port 9: offline
    p = subprocess.run([sys.executable, str(ROOT / 'val.py'), '--weights', 'yolov5x.pt', '--prune', '0.3', '--half'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = (p.stdout + p.stderr).splitlines()
    errors = [x for x in out if x.startswith('ERROR:')]
    assert p.returncode == 1 and len(errors) == 1 and 'Traceback' not in p.stderr, out
    assert errors[0].startswith('ERROR: yolov5x.pt not found locally and downloading http://127.0.0.1:9/yolov5x.pt '
                                'failed') and 'releases/tag/v7.0' in errors[0]
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no .part, no runs folder


@pytest.mark.parametrize('task', ['val', 'sparsity'])
def test_download_error_is_one_line(task, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('YOLOV5_ASSETS_URL', 'http://127.0.0.1:9')
    with pytest.raises(SystemExit) as e:
        val.main(val.parse_opt(['--weights', str(tmp_path / 'yolov5s.pt'), '--data', 'shapes.yaml', '--task', task,
                                '--project', str(tmp_path)]))
    assert e.value.code == 1
    out = capsys.readouterr()
    errors = [x for x in (out.out + out.err).splitlines() if x.startswith('ERROR:')]
    assert len(errors) == 1 and 'yolov5s.pt not found locally and downloading' in errors[0]


def test_dataset_download_error_is_one_line(weights, tmp_path, capsys):
    """A data yaml whose zip cannot be fetched (offline): today's one line, now naming the failed download."""
    y = tmp_path / 'remote.yaml'
    y.write_text(f'path: {tmp_path / "remote"}\ntrain: images/val\nval: images/val\nnames: {NAMES}\n'
                 'download: http://127.0.0.1:9/remote.zip\n')
    with pytest.raises(SystemExit) as e:
        val.main(val.parse_opt(['--weights', str(weights), '--data', str(y), '--project', str(tmp_path)]))
    out = capsys.readouterr()
    errors = [x for x in (out.out + out.err).splitlines() if x.startswith('ERROR:')]
    assert e.value.code == 1 and len(errors) == 1, out
    assert errors[0].startswith('ERROR: Dataset not found: ') and 'downloading http://127.0.0.1:9/remote.zip failed' \
        in errors[0]
    assert not (tmp_path / 'remote').exists() and not (tmp_path / 'exp').exists()


def test_compare_download_error_is_one_line(tmp_path, monkeypatch):
    import compare
    monkeypatch.setenv('YOLOV5_ASSETS_URL', 'http://127.0.0.1:9')
    with pytest.raises(SystemExit) as e:
        compare.main(compare.parse_opt(['--weights', str(tmp_path / 'yolov5x.pt'), '--project', str(tmp_path)]))
    assert str(e.value).startswith('ERROR: yolov5x.pt not found locally and downloading') and '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------------ COCO-format set
COCO_AS = {0: 32, 1: 62, 2: 33}  # the shapes fixture's classes as COCO class indices: sports ball, tv, kite


def coco_named_model(weights: Path, file: Path) -> Path:
    """An official-style 80-class checkpoint (COCO's names, no training opt) that really detects: yolov5n from
    models/yolov5n.yaml carrying the trained shapes fixture's weights, its 3 class outputs moved to the COCO
    indices COCO_AS and the other 77 switched off (tiny random weights, bias -12: scores ~6e-6, under any threshold;
    not zeros, which would make the head look 90 % pruned already)."""
    from models.experimental import attempt_load
    from models.yolo import DetectionModel
    from utils.coco_eval import coco_names
    from utils.general import intersect_dicts

    src = attempt_load(weights, fuse=False)
    model = DetectionModel('yolov5n.yaml', nc=80)
    model.load_state_dict(intersect_dicts(src.state_dict(), model.state_dict()), strict=False)
    model.model[-1].anchors.copy_(src.model[-1].anchors)  # the fixture's autoanchor result
    na, gen = model.model[-1].na, torch.Generator().manual_seed(0)
    for new, old in zip(model.model[-1].m, src.model[-1].m):
        w, b = new.weight.data.view(na, 85, -1), new.bias.data.view(na, 85)
        ow, ob = old.weight.data.view(na, 8, -1), old.bias.data.view(na, 8)
        w[:, 5:], b[:, 5:] = torch.randn(w[:, 5:].shape, generator=gen) * 1e-3, -12
        w[:, :5], b[:, :5] = ow[:, :5], ob[:, :5]
        for c, k in COCO_AS.items():
            w[:, 5 + k], b[:, 5 + k] = ow[:, 5 + c], ob[:, 5 + c]
    model.names = dict(enumerate(coco_names()))
    return save_ckpt(model.eval(), file)


def fake_coco(root: Path, n: int) -> Path:
    """COCO's layout with n embedded-set val images renamed to COCO ids: images/val2017/000000000001.jpg ...,
    labels/val2017/*.txt (classes as COCO_AS), val2017.txt (``./images/...`` lines), annotations/
    instances_val2017.json (91-scheme category ids) and a coco.yaml (data/coco.yaml with 'path' here)."""
    from utils.coco_eval import coco80_to_coco91_class, coco_names
    shapes = check_dataset(ROOT / 'data' / 'shapes.yaml')
    src, ids91 = Path(shapes['path']), coco80_to_coco91_class()
    for sub in ('images', 'labels'):
        (root / sub / 'val2017').mkdir(parents=True)
    images, annotations, lines = [], [], []
    for i, im in enumerate(sorted((src / 'images' / 'val').glob('*.jpg'))[:n], start=1):
        stem = f'{i:012d}'
        shutil.copy(im, root / 'images' / 'val2017' / f'{stem}.jpg')
        h, w = 256, 256
        rows = np.loadtxt(src / 'labels' / 'val' / f'{im.stem}.txt', ndmin=2)
        rows[:, 0] = [COCO_AS[int(c)] for c in rows[:, 0]]
        np.savetxt(root / 'labels' / 'val2017' / f'{stem}.txt', rows, fmt='%g')
        images.append({'id': i, 'file_name': f'{stem}.jpg', 'width': w, 'height': h})
        for c, xc, yc, bw, bh in rows:
            box = [(xc - bw / 2) * w, (yc - bh / 2) * h, bw * w, bh * h]
            annotations.append({'id': len(annotations) + 1, 'image_id': i, 'category_id': ids91[int(c)], 'bbox': box,
                                'area': box[2] * box[3], 'iscrowd': 0})
        lines.append(f'./images/val2017/{stem}.jpg')
    (root / 'val2017.txt').write_text('\n'.join(lines) + '\n')
    (root / 'annotations').mkdir()
    cats = [{'id': k, 'name': name} for k, name in zip(ids91, coco_names())]
    (root / 'annotations' / 'instances_val2017.json').write_text(
        json.dumps({'images': images, 'annotations': annotations, 'categories': cats}))
    y = (ROOT / 'data' / 'coco.yaml').read_text().replace('path: datasets/coco', f'path: {root}')
    (root / 'coco.yaml').write_text(y)
    return root / 'coco.yaml'


@pytest.mark.slow
def test_mission_command_on_coco_format_set(weights, tmp_path, monkeypatch, capsys):
    """`val.py --weights yolov5x.pt --prune 0.3 --half` with an 80-class COCO-named checkpoint on disk and COCO data
    present: data/coco.yaml is chosen, P/R/mAP, pycocotools' AP/AR block and the sparsity line are printed."""
    monkeypatch.setattr(model_loading, 'COCO_DATA', fake_coco(tmp_path / 'coco', 8))
    monkeypatch.chdir(tmp_path)
    coco_named_model(weights, tmp_path / 'yolov5x.pt')
    set_logging()
    val.main(val.parse_opt(['--weights', 'yolov5x.pt', '--prune', '0.3', '--half', '--img', '256', '--workers', '0',
                            '--project', str(tmp_path / 'runs')]))
    cap = capsys.readouterr()
    out = cap.err + cap.out  # the log (stderr), then pycocotools' prints (stdout)
    first = out.splitlines()[0]
    assert f"data={tmp_path / 'coco' / 'coco.yaml'} (--data not given: yolov5x.pt predicts COCO's 80 classes)" \
           in first and 'save_json=True' in first
    assert 'sparsity 30.0% of prunable weights' in out and '--half is only supported on CUDA, using FP32' in out
    assert any(x.split()[:3] == ['all', '8', str(sum(len(np.loadtxt(f, ndmin=2)) for f in (tmp_path / 'coco' / 'labels'
               / 'val2017').glob('*.txt')))] for x in out.splitlines())  # the P R mAP50 mAP50-95 row
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in out
    assert 'Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in out
    m = json.loads((tmp_path / 'runs' / 'exp' / 'metrics.json').read_text())
    assert m['images'] == 8 and m['sparsity'] == pytest.approx(0.3, abs=1e-3)
    assert set(m['classes']) <= {'sports ball', 'tv', 'kite'}
    # a real detector on real labels: both AP implementations see the same matches through the 80 -> 91 ids
    assert m['mAP50'] > 0.3 and abs(m['coco_AP50'] - m['mAP50']) < 0.03 and abs(m['coco_AP'] - m['mAP50-95']) < 0.03
    preds = json.loads((tmp_path / 'runs' / 'exp' / 'yolov5x_predictions.json').read_text())
    assert {p['category_id'] for p in preds} <= {37, 72, 38}  # sports ball, tv, kite in COCO's 91 ids
