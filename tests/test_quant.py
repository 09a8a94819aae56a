"""INT8 export (utils/compression/quant/ptq.py, export.py --int8): calibration reader, which nodes stay FP32, a
round trip export -> val with the accuracy bounded, detections close to the FP32 file's, and the bad inputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from tests.detections import assert_boxes_match, read_labels
from utils.compression.quant.ptq import CalibrationError, CalibrationImages, decode_nodes, int8_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'


def write_images(folder: Path, n: int, size: tuple[int, int] = (48, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f'{i}.jpg'), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def test_calibration_reader_batches_letterboxed_rgb(tmp_path):
    folder = write_images(tmp_path / 'ims', 5)
    (folder / 'broken.jpg').write_bytes(b'not a jpeg')  # listed as an image, unreadable: skipped and counted
    calib = CalibrationImages(folder, (32, 32), n=10, batch=2)
    batches = []
    while (b := calib.get_next()) is not None:
        batches.append(b['images'])
    assert [x.shape for x in batches] == [(2, 3, 32, 32)] * 3  # 5 readable images -> 2 + 2 + (1 repeated)
    assert calib.skipped == 1 and all(x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 for x in batches)
    assert np.array_equal(batches[-1][0], batches[-1][1])  # the partial batch is padded with its own image
    im = cv2.imread(str(folder / '0.jpg'))  # 48x64 -> 24x32 letterboxed into 32x32: rows 4..27 hold the image
    expect = cv2.resize(im, (32, 24), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].transpose(2, 0, 1) / 255
    assert np.allclose(batches[0][0][:, 4:28], expect, atol=1 / 255 + 1e-6)
    assert np.allclose(batches[0][0][:, :3], 114 / 255)  # grey padding, as val.py letterboxes
    calib.rewind()
    assert calib.get_next()['images'].shape == (2, 3, 32, 32)


def test_calibration_reader_spreads_and_refuses_bad_settings(tmp_path):
    folder = write_images(tmp_path / 'ims', 9)
    assert [Path(f).stem for f in CalibrationImages(folder, (32, 32), n=3).files] == ['0', '3', '6']
    with pytest.raises(CalibrationError, match='no calibration images'):
        CalibrationImages(tmp_path / 'empty', (32, 32))
    with pytest.raises(CalibrationError, match='>= 1'):
        CalibrationImages(folder, (32, 32), n=0)


def test_int8_path_is_next_to_the_weights():
    assert int8_path('runs/train/exp/weights/best.pt') == Path('runs/train/exp/weights/best-int8.onnx')


@pytest.mark.onnx
def test_decode_and_detect_convs_stay_fp32(tmp_path):
    import onnx

    from utils.compression.quant.ptq import quantize_onnx
    from utils.onnx_export import export_onnx

    torch.manual_seed(0)
    model = DetectionModel('yolov5n.yaml', nc=3).eval().fuse()
    src, dst = tmp_path / 'm.onnx', tmp_path / 'm-int8.onnx'
    export_onnx(model, torch.zeros(1, 3, 64, 64), src, opset=17)
    heads, decode = decode_nodes(onnx.load(str(src)))
    assert heads == [f'/model/model.24/m.{i}/Conv' for i in range(3)]
    assert decode and all(n.startswith('/model/model.24/') for n in decode)
    assert {'Sigmoid', 'Concat', 'Pow'} <= {n.op_type for n in onnx.load(str(src)).graph.node if n.name in decode}
    report = quantize_onnx(src, dst, CalibrationImages(write_images(tmp_path / 'ims', 4), (64, 64), 4))
    q = onnx.load(str(dst))
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == 'DequantizeLinear'}
    nodes = {n.name: n for n in q.graph.node}
    assert not any(x in dq_out for n in decode for x in nodes[n].input)  # the decode reads FP32 tensors only
    assert not any(nodes[h].input[1] in dq_out for h in heads)  # Detect convs keep FP32 weights (they may read a
    assert nodes['/model/model.0/conv/Conv'].input[1] in dq_out  # dequantized input shared with an INT8 conv)
    assert report.quantized > 50 and report.kept_fp32 >= len(decode)
    assert {(p.key, p.value) for p in q.metadata_props} >= {('stride', '32')}  # val/detect read the metadata
    with pytest.raises(CalibrationError, match='no Conv node named'):
        quantize_onnx(src, dst, CalibrationImages(tmp_path / 'ims', (64, 64), 4), keep_fp32=['nope'])
    export_onnx(model, torch.zeros(1, 3, 64, 64), src, opset=12)
    with pytest.raises(CalibrationError, match='opset >= 13'):
        quantize_onnx(src, dst, CalibrationImages(tmp_path / 'ims', (64, 64), 4))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope='module')
def int8_export(tmp_path_factory) -> tuple[Path, Path]:
    w = tmp_path_factory.mktemp('int8') / 'shapes.pt'
    w.write_bytes(SHIPPED.read_bytes())
    p = cli('export.py', '--weights', str(w), '--img', '128', '--int8', '--calib-images', '32')
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'nodes quantized' in p.stdout + p.stderr and 'MB INT8' in p.stdout + p.stderr
    return w.with_suffix('.onnx'), int8_path(w)


@pytest.mark.onnx
@pytest.mark.slow
def test_int8_round_trip_keeps_accuracy(int8_export, tmp_path):
    """export --int8 -> val.py on the shipped model at 128 px: mAP50-95 within 0.02 of the FP32 file (the full-size
    measurement, 256 px: 0.811 vs 0.819, is in docs/export.md)."""
    maps = []
    for f in int8_export:
        p = cli('val.py', '--weights', str(f), '--img', '128', '--workers', '0', '--project', str(tmp_path))
        assert p.returncode == 0, p.stderr[-2000:]
        line = next(x for x in (p.stdout + p.stderr).splitlines() if x.split()[:1] == ['all'])
        maps.append(float(line.split()[-1]))
    assert maps[0] > 0.5 and abs(maps[0] - maps[1]) <= 0.02, maps


@pytest.mark.onnx
@pytest.mark.slow
def test_int8_detections_match_fp32(int8_export, tmp_path):
    """detect.py on the sample images: every confident FP32 box has an INT8 box of the same class at IoU >= 0.8."""
    out = []
    for f in int8_export:
        p = cli('detect.py', '--weights', str(f), '--source', 'data/images', '--img', '128', '--save-txt',
                '--save-conf', '--nosave', '--project', str(tmp_path), '--name', f.stem)
        assert p.returncode == 0, p.stderr[-2000:]
        out.append(read_labels(tmp_path / f.stem / 'labels'))
    assert_boxes_match(*out)


@pytest.mark.onnx
@pytest.mark.parametrize('argv, words', [
    (['--int8', '--half'], '--int8 and --half do not combine'),
    (['--int8', '--opset', '12'], 'opset >= 13'),
    (['--int8', '--include', 'deep'], 'add --include onnx'),
    (['--int8', '--data', 'nothere.yaml'], 'nothere.yaml'),
])
def test_int8_bad_flags_are_one_line_errors(argv, words, tmp_path):
    w = tmp_path / 'shapes.pt'
    w.write_bytes(SHIPPED.read_bytes())
    p = cli('export.py', '--weights', str(w), '--img', '64', *argv)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and last.startswith('ERROR: ') and words in last
    assert not int8_path(w).exists()
