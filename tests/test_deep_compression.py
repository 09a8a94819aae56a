"""Tests for utils/compression/deep/ (codec.py, deep_file.py): bit-exact round trip (file -> checkpoint.load / attempt_load) for every
shipped YAML, corrupt and truncated files, the size report, export naming and the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.experimental import attempt_load
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, load, make_checkpoint, save
from utils.compression.deep.codec import DEEP_KEY
from utils.compression.deep.deep_file import deep_path, deep_report, export_deep, main, parse_opt
from utils.compression.deep.sharing import share_weights
from utils.compression.layers import prunable_layers
from utils.general import yaml_load

MODELS = Path(__file__).resolve().parents[1] / 'models'
YAMLS = sorted(MODELS.glob('yolov5*.yaml')) + sorted((MODELS / 'hub').glob('yolov5*.yaml'))


def small_model(cfg: Path, seed: int = 0, sparsity: float = 0.8, width: float = 0.0625) -> DetectionModel:
    """The YAML's layers at 1/16 width and 1/3 depth (n/s/m/l/x differ only in these two multipliers; this keeps
    the test fast), random weights, ``sparsity`` of each Conv weight zeroed at random."""
    d = yaml_load(cfg)
    d['width_multiple'], d['depth_multiple'] = width, min(d['depth_multiple'], 0.33)
    torch.manual_seed(seed)
    model = DetectionModel(d, ch=3, nc=3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in prunable_layers(model):
            m.weight.mul_(torch.rand(m.weight.shape, generator=g) >= sparsity)
    return model


def bits_equal(a: dict, b: dict) -> bool:
    """Same keys, dtypes, shapes and bit patterns (so -0.0 vs 0.0 and NaN payloads count)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.is_floating_point():
            x, y = x.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]), \
                y.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[y.element_size()])
        if not torch.equal(x, y):
            return False
    return True


@pytest.mark.parametrize('cfg', YAMLS, ids=[p.name for p in YAMLS])
def test_round_trip_bit_exact_every_yaml(cfg, tmp_path):
    model = small_model(cfg)
    share_weights(model, 4)
    ckpt = make_checkpoint(model, opt={'imgsz': 64})  # FP16, as saved by train.py
    weights = tmp_path / 'best.pt'
    save(ckpt, weights)
    out = export_deep(weights)
    assert out == tmp_path / 'best.deep.pt' and out.stat().st_size < weights.stat().st_size / 4
    back = load(out)
    assert bits_equal(back['model'].state_dict(), load(weights)['model'].state_dict())
    assert back['opt'] == {'imgsz': 64} and back['optimizer'] is None and back['epoch'] == -1
    loaded = attempt_load(out, fuse=False)
    assert isinstance(loaded, DetectionModel) and loaded.yaml == model.yaml
    assert DEEP_KEY in load(out, expand=False)


def test_round_trip_unshared_fp32_with_signed_zeros_and_nan(tmp_path):
    model = small_model(YAMLS[0], seed=1, sparsity=0.9)  # not shared: one codebook entry per distinct value
    w = prunable_layers(model)[3][1].weight
    with torch.no_grad():
        w.view(-1)[:3] = torch.tensor([-0.0, float('nan'), -0.0])
    ckpt = {'model': model, 'epoch': 3, 'ema': None}
    save(ckpt, tmp_path / 'w.pt')
    out = export_deep(tmp_path / 'w.pt', tmp_path / 'other.deep.pt')
    assert out.name == 'other.deep.pt'
    assert bits_equal(load(out)['model'].state_dict(), model.state_dict())


@pytest.fixture(scope='module')
def deep_file(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp('deep')
    model = small_model(MODELS / 'yolov5n.yaml', seed=2, sparsity=0.9)
    share_weights(model, 3, edge_bits=None)  # one width everywhere: the report test checks 3-bit codes
    save(make_checkpoint(model), d / 'm.pt')
    return export_deep(d / 'm.pt'), load(d / 'm.pt')['model'].state_dict()


def test_flipped_bytes_and_truncation_never_load_a_wrong_model(deep_file, tmp_path):
    file, reference = deep_file
    data = file.read_bytes()
    stored = load(file, expand=False)[DEEP_KEY]
    payload, stream = stored['payload'].numpy().tobytes(), stored['stream'].numpy().tobytes()
    # one byte in the Huffman stream and one in the LZMA payload: the checksum catches both
    for part in (stream, payload):
        at = data.index(part[:64]) + len(part) // 2
        bad = tmp_path / 'bad.pt'
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])
        with pytest.raises(CheckpointError, match='checksum') as e:
            load(bad)
        assert '\n' not in str(e.value) and str(bad) in str(e.value)
    # anywhere else: an error, or (e.g. zip padding) exactly the same model
    rng = np.random.default_rng(0)
    for at in rng.choice(len(data), 12, replace=False):
        bad = tmp_path / 'bad.pt'
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
        try:
            ckpt = load(bad)
        except CheckpointError as e:
            assert '\n' not in str(e)
            continue
        assert bits_equal(ckpt['model'].state_dict(), reference), at
    for n in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / 'short.pt'
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            load(bad)


def test_report_counts_and_ratios(deep_file):
    file, reference = deep_file
    r = deep_report(file)
    assert len(r.layers) == 60 and r.file_bytes == file.stat().st_size
    for s in r.layers:
        assert s.numel == reference[s.name].numel() and s.nnz == int((reference[s.name] != 0).sum())
        assert s.codebook <= 8 and s.index_bits <= 3 * s.nnz  # Huffman is optimal: never longer than a 3-bit code
    assert r.fp32_bytes > r.fp16_bytes > r.file_bytes and r.ratio_fp32 == r.fp32_bytes / r.file_bytes
    coded = sum(s.coded_bits for s in r.layers) / 8
    assert coded < r.file_bytes
    table = r.table()
    assert 'x FP32' in table and f'({r.ratio_fp32:.1f}x)' in table


def test_cli_and_errors(deep_file, tmp_path, capsys):
    file, _ = deep_file
    assert deep_path('runs/x/best.pt') == Path('runs/x/best.deep.pt')
    src = file.with_name('m.pt')
    assert main(parse_opt(['--weights', str(src), '--bits', '2'])) == [file]
    weights = {n: w for n, w in load(file)['model'].state_dict().items() if n.endswith('conv.weight')}
    assert all(len(torch.unique(w[w != 0])) <= (256 if n == 'model.0.conv.weight' else 4) for n, w in weights.items())
    assert main(parse_opt(['--weights', str(src), '--bits', '2', '--edge-bits', '2'])) == [file]
    weights = {n: w for n, w in load(file)['model'].state_dict().items() if n.endswith('.weight') and w.dim() == 4}
    assert all(len(torch.unique(w[w != 0])) <= 4 for w in weights.values())  # one width everywhere
    with pytest.raises(SystemExit) as e:
        main(parse_opt(['--weights', str(tmp_path / 'missing.pt')]))
    assert 'not found' in str(e.value)


def test_export_include_deep_writes_coded_checkpoint(tmp_path):
    """python export.py --weights W --include deep writes W.deep.pt, which loads bit-exactly (also channel-pruned)."""
    import export
    from utils.compression.channel.pruning import prune_channels

    model = small_model(YAMLS[0], width=0.125)
    prune_channels(model, 0.3)  # a physically smaller model codes like any other
    w = tmp_path / 'sparse.pt'
    save(make_checkpoint(model), w)
    files = export.run(weights=w, include=['deep'])
    assert files == [str(tmp_path / 'sparse.deep.pt')]
    assert bits_equal(attempt_load(files[0], fuse=False).state_dict(), attempt_load(w, fuse=False).state_dict())
