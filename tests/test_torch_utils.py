"""Device selection, EMA and optimizer groups."""
from __future__ import annotations

import pytest
import torch

from models.yolo import DetectionModel
from utils.torch_utils import DeviceError, ModelEMA, select_device, smart_optimizer


def test_select_device_cpu():
    assert select_device('cpu').type == 'cpu'
    assert select_device('').type in {'cpu', 'cuda'}


def test_select_device_missing_cuda():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match='CUDA'):
        select_device(str(n + 3))
    with pytest.raises(DeviceError):
        select_device('gpu please')


def test_optimizer_groups():
    m = DetectionModel('yolov5n.yaml')
    opt = smart_optimizer(m, 'SGD', 0.01, 0.937, 5e-4)
    g_b, g_w, g_bn = opt.param_groups
    n_conv = sum(1 for x in m.modules() if isinstance(x, torch.nn.Conv2d))
    n_bn = sum(1 for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
    assert len(g_w['params']) == n_conv and g_w['weight_decay'] == 5e-4
    assert len(g_bn['params']) == n_bn and g_bn['weight_decay'] == 0
    assert len(g_b['params']) == n_bn + 3  # BN biases + the 3 Detect conv biases
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(m.parameters()))


def test_ema_ramp():
    m = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(m.weight)
    ema = ModelEMA(m, decay=0.9, tau=1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    d = 0.9 * (1 - torch.exp(torch.tensor(-1.0)))
    assert torch.allclose(ema.ema.weight, torch.full_like(m.weight, 1 - d.item()))
    assert ema.updates == 1
