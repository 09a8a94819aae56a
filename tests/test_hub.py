"""hubconf.py, models/autoshape.py: torch.hub.load(..., source='local') for every weight form written here gives
detect.py's boxes; every input type; Detections' print/save/crop/render/pandas/tolist; one-line input errors.

detect.py runs once per weight form (a subprocess, --save-txt --save-conf) on the shipped sample images at 256 px.
Its label lines are ``cls xc yc w h conf`` normalised to the image, written with %g after rounding the boxes to whole
pixels; the hub model is called on one image at a time (the letterbox detect.py uses for one image) and must give the
same classes, the same confidences (to %g's 6 digits) and boxes that round to detect.py's.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import traceback
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import hubconf
from models.autoshape import AutoShape, Detections, ImageInputError
from models.experimental import checkpoint_model
from models.yolo import DetectionModel
from tests.conftest import ROOT
from tests.test_downloads import serving
from tests.test_structure import SCRIPTS, imports_of, project_modules
from utils.checkpoint import CheckpointError, load, make_checkpoint, save
from utils.compression.channel.pruning import prune_channels
from utils.compression.deep.deep_file import export_deep
from utils.compression.weight.dns import DNS
from utils.compression.weight.magnitude import sparsity
from utils.downloads import DownloadError
from utils.general import xywhn2xyxy

SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'
IMAGES = sorted((ROOT / 'data' / 'images').glob('*.jpg'))
XYXY = ['xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name']
XYWH = ['xcenter', 'ycenter', 'width', 'height', 'confidence', 'class', 'name']


def hub_load(weights: str | Path, **kwargs):
    """The user's call: torch.hub.load on this checkout."""
    return torch.hub.load(str(ROOT), 'custom', str(weights), source='local', **kwargs)


def run_detect(weights: Path, out: Path, name: str) -> dict[str, np.ndarray]:
    """detect.py on data/images at 256 px -> {image name: (n, 6) x1, y1, x2, y2 (pixels), conf, cls} from its labels."""
    cmd = [sys.executable, 'detect.py', '--weights', str(weights), '--img', '256', '--save-txt', '--save-conf',
           '--nosave', '--project', str(out), '--name', name, '--exist-ok']
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    boxes = {}
    for f in IMAGES:
        h, w = cv2.imread(str(f)).shape[:2]
        txt = out / name / 'labels' / f'{f.stem}.txt'  # none for an image without detections
        lines = np.loadtxt(txt, ndmin=2) if txt.is_file() else np.zeros((0, 6))
        boxes[f.name] = np.concatenate((xywhn2xyxy(lines[:, 1:5], w, h), lines[:, 5:6], lines[:, 0:1]), 1)
    return boxes


@pytest.fixture(scope='module')
def forms(tmp_path_factory) -> dict[str, Path]:
    """The shipped model written in every .pt form: DNS (masks frozen at 50 % after the surgery, with its 'dns'
    state), the same weights as a compact (sparse-coded) .pt and as .deep.pt, and a 20 % channel-pruned model."""
    d = tmp_path_factory.mktemp('forms')
    model = checkpoint_model(load(SHIPPED)).float()
    dns_model = deepcopy(model)
    dns = DNS(dns_model, target=0.5, surgery_steps=1, s_init=0.5)
    dns.before_step()
    dns.after_step()  # the one surgery step ends in the exact cut to 50 %: masks frozen, as after training
    save(make_checkpoint(dns_model, dns=dns.state_dict()), d / 'dns.pt')
    save(make_checkpoint(dns_model), d / 'compact.pt', compact=True)
    export_deep(d / 'dns.pt', d / 'dns.deep.pt')
    prune_channels(model, 0.2)  # one-shot: many low-confidence boxes (more to compare); 0.3 leaves none
    save(make_checkpoint(model), d / 'channel.pt')
    return {'dense': SHIPPED, 'dns': d / 'dns.pt', 'compact': d / 'compact.pt', 'deep': d / 'dns.deep.pt',
            'channel': d / 'channel.pt'}


@pytest.fixture(scope='module')
def detect_boxes(forms, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """detect.py's boxes per weight form (compact.pt holds dns.pt's weights: both are compared with dns.pt's run)."""
    out = tmp_path_factory.mktemp('detect')
    return {name: run_detect(forms[name], out, name) for name in ('dense', 'dns', 'deep', 'channel')}


@pytest.fixture(scope='module')
def dense():
    return hub_load(SHIPPED)


def assert_same_as_detect(model: AutoShape, expected: dict[str, np.ndarray]) -> tuple[float, float]:
    """Each sample image alone through ``model`` at 256 px against detect.py's boxes; returns the largest box and
    confidence differences (pixels, absolute) before rounding."""
    worst_px = worst_conf = 0.0
    for f in IMAGES:
        got = model(f, size=256).xyxy[0].cpu().numpy().astype(np.float64)
        want = expected[f.name]
        got, want = got[np.argsort(-got[:, 4], kind='stable')], want[np.argsort(-want[:, 4], kind='stable')]
        assert got.shape == want.shape, f'{f.name}: {len(got)} boxes, detect.py found {len(want)}'
        assert (got[:, 5] == want[:, 5]).all(), f.name
        assert np.abs(got[:, 4] - want[:, 4]).max() < 1e-5, f.name  # %g keeps 6 significant digits
        assert np.abs(got[:, :4].round() - want[:, :4]).max() < 2e-3, f.name  # detect.py rounds to whole pixels
        worst_px = max(worst_px, float(np.abs(got[:, :4] - want[:, :4]).max()))
        worst_conf = max(worst_conf, float(np.abs(got[:, 4] - want[:, 4]).max()))
    assert worst_px <= 0.5 + 2e-3
    return worst_px, worst_conf


# ---------------------------------------------------------------------------------------------- weight forms
@pytest.mark.slow
@pytest.mark.parametrize('form,reference', [('dense', 'dense'), ('dns', 'dns'), ('compact', 'dns'), ('deep', 'deep'),
                                            ('channel', 'channel')])
def test_hub_gives_detect_boxes_for_every_weight_form(forms, detect_boxes, dense, form, reference):
    model = hub_load(forms[form])
    assert isinstance(model, AutoShape) and model.names == {0: 'circle', 1: 'rectangle', 2: 'triangle'}
    px, conf = assert_same_as_detect(model, detect_boxes[reference])
    print(f'{form}: max |Δ| {px:.3f} px, {conf:.2e} conf against detect.py')
    if form == 'channel':  # the checkpoint's own smaller modules, not a model rebuilt from the yaml
        assert sum(p.numel() for p in model.parameters()) < 0.7 * sum(p.numel() for p in dense.parameters())
    if form in ('dns', 'compact', 'deep'):
        assert abs(float(sparsity(model.model)) - 0.5) < 0.01


@pytest.mark.slow
@pytest.mark.onnx
def test_hub_onnx_gives_detect_boxes(tmp_path):
    w = tmp_path / 'shapes.pt'
    w.write_bytes(SHIPPED.read_bytes())
    subprocess.run([sys.executable, 'export.py', '--weights', str(w), '--include', 'onnx', '--img', '256'], cwd=ROOT,
                   check=True, capture_output=True)
    onnx = w.with_suffix('.onnx')
    model = hub_load(onnx)
    assert model.names == {0: 'circle', 1: 'rectangle', 2: 'triangle'}
    px, conf = assert_same_as_detect(model, run_detect(onnx, tmp_path, 'onnx'))
    print(f'onnx: max |Δ| {px:.3f} px, {conf:.2e} conf against detect.py')
    r = model(IMAGES, size=320)  # a fixed 256 x 256 export runs at its own size, batches in chunks
    assert r.s == (3, 3, 256, 256) and r.n == 3


def test_upstream_v70_checkpoint_loads(upstream_dir):
    f = upstream_dir / 'yolov5n-v7.0.pt'
    if not f.is_file():
        pytest.skip(f'{f} not found')
    model = hub_load(f)
    r = model(IMAGES[0], size=256)
    assert isinstance(r, Detections) and r.n == 1 and r.pred[0].shape[1] == 6
    assert len(r.names) == model.model.model[-1].nc == model.nc


# ---------------------------------------------------------------------------------------------- inputs
def test_every_input_type_gives_the_file_path_boxes(dense):
    f = IMAGES[1]
    ref = dense(str(f), size=256)
    rgb = cv2.imread(str(f))[..., ::-1]  # OpenCV arrays are passed as RGB, upstream's convention
    for im in (f, Image.open(f), rgb, np.ascontiguousarray(rgb), rgb.transpose(2, 0, 1), rgb.astype(np.float32),
               np.dstack((rgb, np.full(rgb.shape[:2], 255, np.uint8)))):  # Path, PIL, RGB, CHW, float, RGBA
        assert torch.equal(dense(im, size=256).xyxy[0], ref.xyxy[0])
    bgr = cv2.imread(str(f))
    assert np.array_equal(dense(bgr, size=256).ims[0], bgr)  # taken as it is: numpy means RGB
    grey = dense(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), size=256)
    assert grey.ims[0].shape == (*bgr.shape[:2], 3) and (grey.ims[0][..., 0] == grey.ims[0][..., 2]).all()
    mixed = dense([str(IMAGES[0]), f, Image.open(IMAGES[2]), rgb], size=256)
    assert mixed.n == len(mixed) == 4 and mixed.files == ['shapes_1.jpg', 'shapes_2.jpg', 'shapes_3.jpg', 'image3.jpg']
    assert [im.shape[:2] for im in mixed.ims] == [(256, 256), (240, 320), (320, 240), (240, 320)]
    assert mixed.s == (4, 3, 256, 256)  # one letterbox shape for the batch: the largest, stride multiple (upstream)


def test_batch_agrees_with_single_images(dense):
    batch = dense(IMAGES, size=256)  # padded to 256 x 256 together: nearly, not bitwise, the single-image boxes
    for i, f in enumerate(IMAGES):
        one = dense(f, size=256).xyxy[0]
        assert batch.xyxy[i].shape == one.shape and torch.equal(batch.xyxy[i][:, 5], one[:, 5])
        assert (batch.xyxy[i][:, :4] - one[:, :4]).abs().max() < 0.25  # measured 0.03 px
        assert (batch.xyxy[i][:, 4] - one[:, 4]).abs().max() < 3e-3  # measured 7e-4
    # 256 x 256 needs no padding: the same input, only batch-size kernels' last bits differ
    assert torch.allclose(dense(IMAGES[0], size=256).xyxy[0], batch.xyxy[0], rtol=0, atol=1e-3)


def test_tensor_goes_straight_to_the_model(dense):
    x = torch.rand(2, 3, 64, 64)
    out = dense(x)
    assert torch.equal(out[0], dense.model(x)[0]) and out[0].shape[:2] == (2, 3 * (8 * 8 + 4 * 4 + 2 * 2))


def test_url_is_downloaded_and_read(dense):
    ref = dense(IMAGES[1], size=256)
    with serving(ranges=True) as srv:
        srv.files['/img/shapes_2.jpg?raw=1'] = IMAGES[1].read_bytes()  # the file name leaves the query out
        r = dense(f'{srv.url}/img/shapes_2.jpg?raw=1', size=256)
    assert torch.equal(r.xyxy[0], ref.xyxy[0]) and r.files == ['shapes_2.jpg']


def test_offline_url_is_one_line(dense):
    url = 'http://127.0.0.1:9/zidane.jpg'  # nothing listens on port 9
    with pytest.raises(DownloadError) as e:
        dense(url)
    assert '\n' not in str(e.value) and url in str(e.value)


def _bad_inputs(tmp: Path) -> list[tuple[object, type[Exception], str]]:
    (tmp / 'notes.jpg').write_text('not a picture')
    (tmp / 'cut.jpg').write_bytes(IMAGES[0].read_bytes()[:300])  # a truncated JPEG: no pixels
    return [
        (tmp / 'missing.jpg', FileNotFoundError, 'missing.jpg'),
        (str(tmp / 'notes.jpg'), ImageInputError, 'notes.jpg'),
        (tmp / 'cut.jpg', ImageInputError, 'cut.jpg'),
        (tmp, ImageInputError, 'folder'),
        ([], ImageInputError, 'empty list'),
        (np.zeros((2, 64, 64, 3), np.uint8), ImageInputError, '(2, 64, 64, 3)'),
        (np.zeros((64, 64, 5), np.uint8), ImageInputError, '(64, 64, 5)'),
        (np.zeros((0, 64, 3), np.uint8), ImageInputError, 'empty'),
        (np.zeros(64, np.uint8), ImageInputError, '(64,)'),
        (np.zeros((8, 8, 3), complex), ImageInputError, 'complex'),
        ([IMAGES[0], 42], ImageInputError, 'input 1 (int)'),
        (torch.zeros(3, 64, 64), ImageInputError, 'BCHW'),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ImageInputError, '0-1'),
    ]


def test_bad_inputs_are_one_line_errors_naming_the_input(dense, tmp_path):
    for im, kind, words in _bad_inputs(tmp_path):
        with pytest.raises(kind) as e:
            dense(im)
        msg = str(e.value)
        assert '\n' not in msg and words in msg, msg
        assert e.value.__cause__ is None and (e.value.__suppress_context__ or e.value.__context__ is None), msg


# ---------------------------------------------------------------------------------------------- results
def test_results_attributes_print_len_tolist(dense, log):
    r = dense(IMAGES[:2], size=256)
    for i, im in enumerate(r.ims):
        h, w = im.shape[:2]
        scale = torch.tensor([w, h, w, h])
        assert torch.allclose(r.xyxyn[i][:, :4] * scale, r.xyxy[i][:, :4], atol=1e-4)
        assert torch.allclose(r.xywhn[i][:, :4] * scale, r.xywh[i][:, :4], atol=1e-4)
        assert torch.allclose(r.xywh[i][:, :2], (r.xyxy[i][:, :2] + r.xyxy[i][:, 2:4]) / 2)
        assert torch.equal(r.xywh[i][:, 4:], r.pred[i][:, 4:])
    r.print()
    lines = '\n'.join(log).splitlines()
    assert lines[0] == 'image 1/2: 256x256 3 circles, 3 rectangles'
    assert lines[1] == 'image 2/2: 240x320 1 circle, 2 rectangles, 1 triangle'
    assert lines[2].startswith('Speed: ') and lines[2].endswith('ms NMS per image at shape (2, 3, 256, 256)')
    assert str(r) == '\n'.join(lines[:3]) and repr(r).startswith("YOLOv5 <class 'models.autoshape.Detections'>")
    assert len(r) == 2 and [len(d) for d in r.tolist()] == [1, 1]
    second = r.tolist()[1]
    assert torch.equal(second.pred[0], r.pred[1]) and second.files == ['shapes_2.jpg'] and second.ims[0] is r.ims[1]
    dense.conf = 0.99
    try:
        assert str(dense(IMAGES[0], size=256)).startswith('image 1/1: 256x256 (no detections)')
    finally:
        del dense.conf


def test_nms_settings_are_attributes(dense, monkeypatch):
    monkeypatch.setattr(dense, 'classes', [1])
    assert set(dense(IMAGES, size=256).pred[1][:, 5].tolist()) == {1.0}
    monkeypatch.setattr(dense, 'classes', None)
    monkeypatch.setattr(dense, 'max_det', 2)
    assert max(len(p) for p in dense(IMAGES, size=256).pred) == 2
    monkeypatch.setattr(dense, 'conf', 0.7)
    assert min(p[:, 4].min() for p in dense(IMAGES, size=256).pred) > 0.7


def test_pandas_has_upstream_columns_and_values(dense):
    r = dense(IMAGES, size=256)
    p = r.pandas()
    assert isinstance(r.xyxy[0], torch.Tensor)  # the original is untouched
    for k, columns in (('xyxy', XYXY), ('xyxyn', XYXY), ('xywh', XYWH), ('xywhn', XYWH)):
        for df, t in zip(getattr(p, k), getattr(r, k)):
            assert list(df.columns) == columns
            assert np.allclose(df[columns[:5]].to_numpy(dtype=np.float64), t[:, :5].numpy(), rtol=0, atol=1e-5)
            assert df['class'].tolist() == [int(c) for c in t[:, 5]]
            assert df['name'].tolist() == [r.names[int(c)] for c in t[:, 5]]
    assert len(p.xyxy[0]) == 6 and p.xyxy[1]['name'].iloc[0] == 'triangle'


def test_save_crop_render_show(dense, tmp_path, log, monkeypatch):
    r = dense(IMAGES[:2], size=256)
    originals = [im.copy() for im in r.ims]
    first, second = r.save(save_dir=tmp_path / 'exp'), r.save(labels=False, save_dir=tmp_path / 'exp')
    assert (first.name, second.name) == ('exp', 'exp2')
    for d in (first, second):
        for f, im in zip(r.files, originals):
            saved = cv2.imread(str(d / f))
            assert saved.shape == im.shape and np.abs(saved.astype(int) - im[..., ::-1]).mean() > 0.1  # boxes drawn
    assert all(np.array_equal(a, b) for a, b in zip(r.ims, originals))  # save() draws on copies
    crops = r.crop(save_dir=tmp_path / 'exp')
    crop_dir = tmp_path / 'exp3' / 'crops'
    assert len(crops) == sum(len(p) for p in r.pred) == len(list(crop_dir.rglob('*.jpg')))
    assert {p.name for p in crop_dir.iterdir()} == {r.names[int(c)] for p in r.pred for c in p[:, 5]}
    c = max(crops, key=lambda c: c['conf'])
    assert c['label'] == f"triangle {c['conf']:.2f}" and c['im'].ndim == 3 and len(c['box']) == 4
    assert len(r.crop(save=False)) == len(crops) and not (tmp_path / 'exp4').exists()
    drawn = r.render()
    assert drawn is r.ims and [d.shape for d in drawn] == [o.shape for o in originals]
    assert all(not np.array_equal(d, o) for d, o in zip(drawn, originals))
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.setattr('platform.system', lambda: 'Linux')
    r.show()
    assert any('no display' in line for line in log)


# ---------------------------------------------------------------------------------------------- hubconf
def test_entry_points_and_dependencies_like_upstream():
    names = ['custom'] + [f'yolov5{s}{p}' for p in ('', '6') for s in 'nsmlx']
    assert all(callable(getattr(hubconf, n)) for n in names) and hubconf.dependencies == ['torch', 'yaml']
    listed = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')]  # torch.hub.list
    assert sorted(listed) == sorted(names)


def test_untrained_model_from_yaml():
    m = torch.hub.load(str(ROOT), 'yolov5n', pretrained=False, classes=3, source='local', _verbose=False)
    assert isinstance(m, AutoShape) and m.nc == 3 and isinstance(m.model, DetectionModel)
    r = m(np.zeros((64, 96, 3), np.uint8), size=96)
    assert r.s == (1, 3, 64, 96) and r.pred[0].shape[1] == 6
    raw = hubconf.yolov5n(pretrained=False, channels=1, classes=2, autoshape=False)
    assert isinstance(raw, DetectionModel) and raw.yaml['ch'] == 1 and raw.model[-1].nc == 2


def test_prune_on_load(dense):
    weight = hub_load(SHIPPED, prune=0.3)
    assert abs(float(sparsity(weight.model)) - 0.3) < 0.01
    channel = hub_load(SHIPPED, prune=0.3, prune_granularity='channel')
    assert sum(p.numel() for p in channel.parameters()) < 0.7 * sum(p.numel() for p in dense.parameters())
    assert isinstance(channel(IMAGES[0], size=256), Detections)


def test_official_names_download_like_the_clis(dense, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with serving(ranges=True) as srv:  # a stand-in release: the shipped yolov5n served as yolov5n.pt
        srv.files['/yolov5n.pt'] = SHIPPED.read_bytes()
        monkeypatch.setenv('YOLOV5_ASSETS_URL', srv.url)
        model = hubconf.yolov5n(_verbose=False)
        assert (tmp_path / 'yolov5n.pt').read_bytes() == SHIPPED.read_bytes()
    assert torch.equal(model(IMAGES[0], size=256).xyxy[0], dense(IMAGES[0], size=256).xyxy[0])
    built = hubconf.yolov5n(classes=3, autoshape=False)  # from the yaml, with the file's weights that fit
    source = checkpoint_model(load(SHIPPED)).float()
    assert built.names == source.names and built.yaml_file == 'yolov5n.yaml'
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in built.state_dict().items() if 'anchors' not in k)


def test_load_errors_are_one_line_and_shallow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('YOLOV5_ASSETS_URL', 'http://127.0.0.1:9')  # offline: nothing listens on port 9
    with pytest.raises(DownloadError) as e:
        hubconf.yolov5s()
    assert '\n' not in str(e.value) and 'yolov5s.pt' in str(e.value)
    assert len(traceback.extract_tb(e.tb)) <= 3  # this test, yolov5s, _create: not the loader's frames
    with pytest.raises(FileNotFoundError, match='nope.pt') as e:
        hub_load(tmp_path / 'nope.pt')
    assert '\n' not in str(e.value)
    for junk in (b'not a checkpoint', b'junk'):  # 'j...' once escaped torch's unpickler as a struct.error
        (tmp_path / 'bad.pt').write_bytes(junk)
        with pytest.raises(CheckpointError) as e:
            hubconf.custom(str(tmp_path / 'bad.pt'))
        assert '\n' not in str(e.value) and 'bad.pt' in str(e.value)


def test_clis_never_import_the_hub_api():
    mods = project_modules()
    mods['hubconf'] = ROOT / 'hubconf.py'
    reached, todo = set(), list(SCRIPTS)
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += imports_of(mods[m], mods)
    assert not reached & {'hubconf', 'models.autoshape'}
    assert 'models.autoshape' in imports_of(ROOT / 'hubconf.py', mods)  # the check sees hubconf's lazy imports
    assert not [n for n in ast.parse((ROOT / 'hubconf.py').read_text()).body  # no work at import time
                if isinstance(n, ast.Import) or (isinstance(n, ast.ImportFrom) and n.module != '__future__')]
