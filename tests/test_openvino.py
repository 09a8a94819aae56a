"""OpenVINO export and runtime (export.py --include openvino [--int8], models/backend.OpenVinoModel): upstream's folder
layout, the same outputs as the ONNX file, the NNCF INT8 model keeping the decode and Detect convs FP32 with its
accuracy bounded, detect.py boxes, and the bad inputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.backend import is_exported, is_openvino
from tests.detections import assert_boxes_match, read_labels
from utils.openvino_export import openvino_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def last_map(p: subprocess.CompletedProcess) -> float:
    line = next(x for x in (p.stdout + p.stderr).splitlines() if x.split()[:1] == ['all'])
    return float(line.split()[-1])


def test_openvino_names_follow_upstream():
    assert openvino_dir('runs/train/exp/weights/best.pt') == Path('runs/train/exp/weights/best_openvino_model')
    assert openvino_dir('w/best.pt', int8=True) == Path('w/best_int8_openvino_model')
    assert is_openvino('w/best_openvino_model') and is_openvino('w/best_int8_openvino_model/')
    assert is_openvino('w/best_openvino_model/best.xml') and is_exported('best.onnx')
    assert not is_openvino('best.pt') and not is_exported('best.deep.pt')


@pytest.fixture(scope='module')
def shipped_copy(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp('ov') / 'shapes.pt'
    w.write_bytes(SHIPPED.read_bytes())
    return w


@pytest.fixture(scope='module')
def fp32_export(shipped_copy) -> Path:
    p = cli('export.py', '--weights', str(shipped_copy), '--img', '128', '--include', 'onnx', 'openvino')
    assert p.returncode == 0, p.stderr[-2000:]
    return openvino_dir(shipped_copy)


@pytest.mark.openvino
def test_fp32_folder_matches_the_onnx_file(fp32_export, shipped_copy):
    """W_openvino_model/ holds W.xml, W.bin and W.yaml {stride, names}; in FP32 it gives the ONNX file's outputs."""
    from models.backend import OnnxModel, OpenVinoModel

    stem = shipped_copy.stem
    assert sorted(f.name for f in fp32_export.iterdir()) == [f'{stem}.bin', f'{stem}.xml', f'{stem}.yaml']
    meta = yaml.safe_load((fp32_export / f'{stem}.yaml').read_text())
    assert meta == {'stride': 32, 'names': {0: 'circle', 1: 'rectangle', 2: 'triangle'}}
    ov_model, onnx_model = OpenVinoModel(fp32_export, precision='f32'), OnnxModel(shipped_copy.with_suffix('.onnx'))
    assert ov_model.names == onnx_model.names and ov_model.fixed_imgsz() == (128, 128) and ov_model.nc == 3
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # 3 images through a batch-1 file
    a, b = ov_model(x)[0], onnx_model(x)[0]
    assert a.shape == b.shape == (3, 1008, 8)
    assert torch.allclose(a, b, atol=1e-2, rtol=1e-3), (a - b).abs().max()


@pytest.fixture(scope='module')
def int8_export(shipped_copy, fp32_export) -> Path:
    p = cli('export.py', '--weights', str(shipped_copy), '--img', '128', '--include', 'openvino', '--int8',
            '--calib-images', '32')
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'convolutions INT8, 3 kept FP32' in p.stdout + p.stderr
    return openvino_dir(shipped_copy, int8=True)


@pytest.mark.openvino
def test_int8_model_keeps_decode_and_detect_convs_fp32(int8_export):
    import openvino as ov

    from utils.compression.quant.openvino_ptq import int8_weights

    m = ov.Core().read_model(str(next(int8_export.glob('*.xml'))))
    convs = {op.get_friendly_name(): int8_weights(op) for op in m.get_ops() if op.get_type_name() == 'Convolution'}
    heads = [n for n in convs if n.startswith('/model/model.24/')]
    assert len(heads) == 3 and not any(convs[h] for h in heads)
    assert sum(convs.values()) == len(convs) - 3
    decode = [op for op in m.get_ops() if op.get_friendly_name().startswith('/model/model.24/')
              and op.get_type_name() in ('Sigmoid', 'Power', 'Concat', 'Multiply', 'Add')]
    assert decode and not any(i.get_source_output().get_node().get_type_name() == 'FakeQuantize'
                              for op in decode for i in op.inputs())


@pytest.mark.openvino
@pytest.mark.slow
def test_int8_val_and_detect_close_to_fp32(fp32_export, int8_export, shipped_copy, tmp_path):
    """val.py on the OpenVINO folders at 128 px: INT8 within 0.02 mAP50-95 of the FP32 ONNX file (the 256 px
    measurement is in docs/export.md); detect.py: every confident FP32 box has an INT8 box of its class at IoU >= 0.8."""
    maps = []
    for w in (shipped_copy.with_suffix('.onnx'), int8_export):
        p = cli('val.py', '--weights', str(w), '--img', '128', '--workers', '0', '--project', str(tmp_path))
        assert p.returncode == 0, p.stderr[-2000:]
        maps.append(last_map(p))
    assert maps[0] > 0.5 and abs(maps[0] - maps[1]) <= 0.02, maps
    out = []
    for w in (shipped_copy.with_suffix('.onnx'), int8_export):
        p = cli('detect.py', '--weights', str(w), '--source', 'data/images', '--img', '128', '--save-txt',
                '--save-conf', '--nosave', '--project', str(tmp_path), '--name', w.name)
        assert p.returncode == 0, p.stderr[-2000:]
        assert 'OpenVINO' in p.stdout + p.stderr or w.suffix == '.onnx'
        out.append(read_labels(tmp_path / w.name / 'labels'))
    assert_boxes_match(*out)


@pytest.mark.openvino
def test_hub_loads_an_openvino_folder(fp32_export):
    import hubconf

    model = hubconf.custom(str(fp32_export), _verbose=False, device='cpu')
    results = model(str(ROOT / 'data' / 'images' / next(p.name for p in (ROOT / 'data' / 'images').iterdir())))
    assert len(results.xyxy) == 1 and model.names == {0: 'circle', 1: 'rectangle', 2: 'triangle'}


@pytest.mark.openvino
@pytest.mark.parametrize('argv, words', [
    (['--include', 'openvino', '--int8', '--half'], '--int8 and --half do not combine'),
    (['--include', 'openvino', '--int8', '--int8-keep-fp32', 'nope'], 'no Conv node named nope'),
    (['--include', 'openvino', '--int8', '--data', 'nothere.yaml'], 'nothere.yaml'),
    (['--include', 'openvino', '--int8-preset', 'fast'], "invalid choice: 'fast'"),
])
def test_bad_flags_are_one_line_errors(argv, words, tmp_path):
    w = tmp_path / 'shapes.pt'
    w.write_bytes(SHIPPED.read_bytes())
    p = cli('export.py', '--weights', str(w), '--img', '64', '--calib-images', '4', *argv)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and words in last, p.stderr[-1500:]
    assert not openvino_dir(w, int8=True).exists()


@pytest.mark.openvino
def test_bad_openvino_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / 'a_openvino_model'
    empty.mkdir()
    bad = tmp_path / 'b_openvino_model'
    bad.mkdir()
    (bad / 'b.xml').write_text('<net>not a model')
    for folder, words in ((empty, 'should hold one OpenVINO .xml model'), (bad, 'is not a valid OpenVINO model'),
                          (tmp_path / 'c_openvino_model', 'not found')):
        p = cli('val.py', '--weights', str(folder), '--img', '64', '--data', 'data/shapes.yaml')
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode != 0 and last.startswith('ERROR: ') and words in last, p.stderr[-1500:]


@pytest.mark.openvino
@pytest.mark.slow
def test_compare_deploy_ladder_end_to_end(tmp_path):
    """compare.py --deploy on 8 images at 64 px: every rung and runtime in the table, ratios, the plot."""
    from tests.conftest import shapes_subset

    data = shapes_subset(tmp_path, 8, 8)
    p = cli('compare.py', '--deploy', '--deploy-oneshot', '0.5', '--data', str(data), '--img', '64',
            '--deploy-shapes', '1x64', '--latency-repeats', '1', '--calib-images', '4', '--project', str(tmp_path),
            '--name', 'ladder')
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / 'ladder'
    lines = (out / 'deploy_ladder.md').read_text().splitlines()
    rows = [[c.strip() for c in x.strip('|').split('|')] for x in lines[2:]]
    assert {r[0] for r in rows} == {'dense', 'one-shot 0.5 FLOPs'}
    runtimes = {r[4] for r in rows}
    assert {'FP32 torch', 'FP32 ORT', 'INT8 ORT', 'INT8 OpenVINO'} <= runtimes
    dense_ort = next(r for r in rows if r[0] == 'dense' and r[4] == 'FP32 ORT')
    assert dense_ort[9] == '1.00x' and float(dense_ort[7]) > 0.1  # its own ratio; a trained model's mAP at 64 px
    pruned = next(r for r in rows if r[0] == 'one-shot 0.5 FLOPs' and r[4] == 'FP32 ORT')
    assert float(pruned[3]) < 0.6 * float(dense_ort[3])  # GFLOPs about halved (rounded widths)
    assert (out / 'deploy_ladder.png').stat().st_size > 10_000 and (out / 'deploy_ladder.csv').is_file()


def test_deploy_rows_bad_specs_are_one_line_errors(tmp_path):
    from benchmarks.deploy_ladder import parse_rows

    with pytest.raises(ValueError, match="look like 'NAME=w1.pt,w2.pt'"):
        parse_rows(['no-equals-sign'])
    with pytest.raises(ValueError, match='not found'):
        parse_rows([f'x={tmp_path / "missing.pt"}'])
