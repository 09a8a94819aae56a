"""Model core: every YAML builds and trains, parameter counts equal upstream's, fusion is exact."""
from __future__ import annotations

import logging

import pytest
import torch

from models.common import C3, SPP, SPPF, Conv, Focus
from models.yolo import MODELS_DIR, Detect, DetectionModel, Model, parse_model

YAMLS = sorted(p.name for p in MODELS_DIR.glob('yolov5*.yaml')) + sorted(p.name for p in (MODELS_DIR / 'hub').glob('yolov5*.yaml'))


def test_all_configs_present():
    assert {f'yolov5{s}.yaml' for s in 'nsmlx'} <= set(YAMLS)
    assert {f'yolov5{s}6.yaml' for s in 'nsmlx'} <= set(YAMLS)


@pytest.mark.parametrize('cfg', [y for y in YAMLS if y[6] in 'ns'])
def test_forward_backward_small(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3)
    nl = 4 if cfg.endswith('6.yaml') else 3
    assert model.model[-1].nl == nl
    assert model.stride.tolist() == [8.0, 16.0, 32.0, 64.0][:nl]
    model.train()
    x = torch.rand(2, 3, 64, 64)  # batch 2: BatchNorm needs > 1 value per channel on the 1x1 P6 map
    out = model(x)
    assert len(out) == nl and out[0].shape == (2, 3, 8, 8, 8)
    loss = sum(o.float().pow(2).mean() for o in out)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        pred, raw = model(x)
    n = sum(3 * (64 // s) ** 2 for s in [8, 16, 32, 64][:nl])
    assert pred.shape == (2, n, 8) and torch.isfinite(pred).all()


@pytest.mark.parametrize('cfg', [y for y in YAMLS if y[6] in 'mlx'])
def test_large_configs_build(cfg):
    """m/l/x only build with a tiny width to keep the suite fast; the full yolov5x count is checked below."""
    from models.yolo import find_model_yaml
    from utils.general import yaml_load
    d = yaml_load(find_model_yaml(cfg))
    d['width_multiple'] = 0.125
    model = DetectionModel(d)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 3, 64, 64))[0]).all()


@pytest.mark.parametrize('cfg,expected', [('yolov5n.yaml', 1872157), ('yolov5s.yaml', 7235389)])
def test_param_counts(cfg, expected):
    assert sum(p.numel() for p in DetectionModel(cfg).parameters()) == expected


def test_yolov5x_param_count():
    # upstream v7.0: 86,749,405 parameters ("86.7M")
    assert sum(p.numel() for p in DetectionModel('yolov5x.yaml').parameters()) == 86749405


def test_v5_yaml_param_count(upstream_dir):
    from utils.checkpoint import load
    yaml = load(upstream_dir / 'yolov5s-v5.0.pt')['model'].yaml
    m = DetectionModel(dict(yaml))
    assert sum(p.numel() for p in m.parameters()) == 7276605
    assert isinstance(m.model[0], Focus) and any(isinstance(x, SPP) for x in m.model)


def test_model_alias_and_attributes():
    assert Model is DetectionModel
    m = DetectionModel('yolov5n.yaml')
    det = m.model[-1]
    assert isinstance(det, Detect) and det.anchors.shape == (3, 3, 2)
    # anchors are stored in stride units: P3 first anchor 10x13 px / 8
    assert torch.allclose(det.anchors[0, 0], torch.tensor([10 / 8, 13 / 8]))
    for i, layer in enumerate(m.model):
        assert layer.i == i and hasattr(layer, 'f') and hasattr(layer, 'np') and layer.type.startswith(('models.', 'torch.'))
    assert isinstance(m.model[9], SPPF) and isinstance(m.model[2], C3)
    assert m.save == [4, 6, 10, 14, 17, 20, 23]
    # Detect bias init: objectness log(8 / (640 / s)^2), classes log(0.6 / (nc - 0.99))
    b = det.m[0].bias.view(3, -1)
    assert torch.allclose(b[:, 4], torch.full((3,), torch.log(torch.tensor(8 / 80 ** 2)).item()), atol=0.2)


def test_bn_settings():
    m = DetectionModel('yolov5n.yaml')
    bn = m.model[0].bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03
    assert isinstance(m.model[0], Conv) and m.model[0].conv.bias is None


def test_fuse_equivalence():
    torch.manual_seed(1)
    m = DetectionModel('yolov5n.yaml', nc=3)
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        y0 = m(x)[0]
        m.fuse()
        y1 = m(x)[0]
    assert not any(hasattr(c, 'bn') for c in m.modules() if isinstance(c, Conv))
    rel = (y1 - y0).abs() / (y0.abs() + 1e-3)
    assert rel.max() < 1e-4


@pytest.mark.parametrize('cfg', ['yolov5n.yaml', 'yolov5n6.yaml'])
def test_detect_decode_paths_identical(cfg):
    """Eval without autograd decodes into one preallocated tensor; with autograd (and when traced for export) the
    split/cat decode runs. Both must give bitwise the same predictions and raw maps, at two sizes (grid rebuild)."""
    torch.manual_seed(0)
    m = DetectionModel(cfg, nc=3).eval()
    for shape in ((2, 3, 128, 192), (1, 3, 64, 64)):
        x = torch.rand(shape)
        with torch.no_grad():
            fast, fast_raw = m(x)
        with torch.enable_grad():
            slow, slow_raw = m(x)
        assert slow.requires_grad and not fast.requires_grad
        assert torch.equal(fast, slow.detach())
        assert all(torch.equal(a, b.detach()) for a, b in zip(fast_raw, slow_raw))
        assert all(r.is_contiguous() for r in fast_raw)


def test_unknown_module_is_clear_error():
    d = {'nc': 1, 'depth_multiple': 1, 'width_multiple': 1, 'anchors': [[10, 13]],
         'backbone': [[-1, 1, 'os.system', ['x']]], 'head': []}
    with pytest.raises(ValueError, match="unknown module 'os.system'"):
        parse_model(d, [3])


def test_gflops_reported():
    from utils.torch_utils import model_info
    _, n_p, _, gflops = model_info(DetectionModel('yolov5n.yaml'), imgsz=640)
    assert n_p == 1872157
    assert 4.2 < gflops < 4.7  # upstream prints 4.5 GFLOPs for yolov5n at 640


def test_yolo_cli(capsys):
    from models import yolo
    yolo.main(yolo.parse_opt(['--cfg', 'yolov5n.yaml', '--imgsz', '64']))


def test_profile_layers_counts_every_layer_and_keeps_the_output(caplog):
    """profile=True logs one row per layer whose GFLOPs add up to the whole model's, and changes no output."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    m = DetectionModel('yolov5n.yaml').eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        rows = m.profile_layers(x, runs=2)
        with FlopCounterMode(display=False) as counter:
            ref = m(x)[0]
        with caplog.at_level(logging.INFO, logger='yolov5'):
            out = m(x, profile=True)[0]
    assert [r.index for r in rows] == list(range(len(m.model)))
    assert all(r.ms > 0 for r in rows) and rows[-1].module.endswith('Detect') and rows[0].params == m.model[0].np
    assert sum(r.gflops for r in rows) == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)
    assert sum(r.params for r in rows) == sum(p.numel() for p in m.parameters())
    assert torch.equal(out, ref)
    assert 'time (ms)' in caplog.text and 'total' in caplog.text and 'models.common.SPPF' in caplog.text


def test_yolo_cli_line_profile(capsys):
    from models import yolo

    yolo.main(yolo.parse_opt(['--cfg', 'yolov5n.yaml', '--imgsz', '64', '--line-profile']))
    out = ''.join(capsys.readouterr())
    assert 'time (ms)' in out and 'models.yolo.Detect' in out and 'forward OK' in out
