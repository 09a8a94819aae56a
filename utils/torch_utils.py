"""PyTorch helpers: devices, seeds, EMA, Conv+BN fusion, model summaries, optimizer groups.

``prune`` and ``sparsity`` (the public pruning entry points, same names as upstream) live in
``utils.compression.weight.magnitude`` and are re-exported here.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from copy import deepcopy

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.compression.layers import de_parallel  # noqa: F401  (public API, upstream's name)
from utils.compression.weight.magnitude import prune, sparsity  # noqa: F401  (public API, see module docstring)
from utils.general import LOGGER


class DeviceError(ValueError):
    """A --device value that cannot be satisfied on this machine."""


def select_device(device: str | int | torch.device = '', batch_size: int = 0) -> torch.device:
    """'' (CUDA:0 if available else CPU), 'cpu', '0', '0,1', 'cuda:1' or 'mps' -> torch.device.

    Raises DeviceError with one line when the requested CUDA device does not exist or the batch size
    is not a multiple of the GPU count.
    """
    if isinstance(device, torch.device):
        return device
    s = str(device).strip().lower().replace('cuda:', '').replace('none', '')
    if s == 'cpu':
        return torch.device('cpu')
    if s == 'mps':
        if not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
            raise DeviceError('--device mps requested but MPS is not available on this machine')
        return torch.device('mps')
    if not s:
        return torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    ids = [x for x in s.replace(' ', '').split(',') if x]
    if not all(x.isdigit() for x in ids):
        raise DeviceError(f"invalid --device '{device}': use '', 'cpu', a CUDA index like '0' or a list like '0,1'")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [x for x in ids if int(x) >= n]
    if missing:
        raise DeviceError(f"invalid CUDA '--device {device}' requested: this machine has {n} CUDA device(s); "
                          f"use '--device cpu' or a valid index")
    if len(ids) > 1 and batch_size > 0 and batch_size % len(ids):
        raise DeviceError(f'--batch-size {batch_size} not multiple of GPU count {len(ids)}')
    return torch.device(f'cuda:{ids[0]}')


def device_info(device: torch.device) -> str:
    """One line naming torch version and the device (GPU name and memory in MiB)."""
    s = f'torch-{torch.__version__} '
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        return s + f'CUDA:{device.index} ({p.name}, {p.total_memory / (1 << 20):.0f}MiB)'
    return s + device.type.upper()


def time_sync() -> float:
    """time.time() after waiting for pending CUDA work (seconds)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch RNGs; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        os.environ['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'


@contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Let rank 0 do something (e.g. build a cache) while the other ranks wait at a barrier."""
    if local_rank not in {-1, 0}:
        dist.barrier()
    yield
    if local_rank == 0:
        dist.barrier()


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold BatchNorm (eval statistics) into a new Conv2d with bias; exact up to float rounding."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.requires_grad_(False).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)  # (c_out,)
        w = conv.weight.float() * scale.view(-1, 1, 1, 1)
        b = conv.bias.float() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float)
        b = (b - bn.running_mean.float()) * scale + bn.bias.float()
        fused.weight.copy_(w.to(fused.weight.dtype))
        fused.bias.copy_(b.to(fused.bias.dtype))
    return fused.to(conv.weight.dtype)


def model_flops(model: nn.Module, imgsz: int | list[int] = 640) -> float:
    """GFLOPs of one forward pass at ``imgsz`` pixels, counted by torch.utils.flop_counter.

    Counted at the model's max stride and scaled by area, as upstream does (its number is 2 x MACs).
    Returns 0.0 when the model cannot run a probe forward.
    """
    from torch.utils.flop_counter import FlopCounterMode
    try:
        p = next(model.parameters())
        stride = max(int(model.stride.max()), 32) if hasattr(model, 'stride') else 32
        ch = model.yaml.get('ch', 3) if hasattr(model, 'yaml') else 3
        im = torch.empty((1, ch, stride, stride), device=p.device, dtype=p.dtype)
        m = deepcopy(model).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(im)
        imgsz = imgsz if isinstance(imgsz, list) else [imgsz, imgsz]
        return counter.get_total_flops() / 1e9 * imgsz[0] / stride * imgsz[1] / stride
    except Exception as e:  # a summary must never break training/validation
        LOGGER.debug(f'FLOPs not computed: {e}')
        return 0.0


def model_info(model: nn.Module, verbose: bool = False, imgsz: int | list[int] = 640) -> tuple:
    """Log '<name> summary: L layers, P parameters, G gradients, F GFLOPs'; returns the 4 numbers."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            name = name.replace('module_list.', '')
            LOGGER.info('%5g %40s %9s %12g %20s %10.3g %10.3g' %
                        (i, name, p.requires_grad, p.numel(), list(p.shape), p.mean(), p.std() if p.numel() > 1 else 0))
    flops = model_flops(model, imgsz)
    n_l = len(list(model.modules()))
    yaml_file = getattr(model, 'yaml_file', '') or (model.yaml.get('yaml_file', '') if hasattr(model, 'yaml') else '')
    name = os.path.splitext(os.path.basename(str(yaml_file)))[0].replace('yolov5', 'YOLOv5') or 'Model'
    LOGGER.info(f'{name} summary: {n_l} layers, {n_p} parameters, {n_g} gradients, {flops:.1f} GFLOPs')
    return n_l, n_p, n_g, flops


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (b,3,h,w) batch by ``ratio`` and pad (value 0.447, ImageNet mean) to a multiple of ``gs``."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = nn.functional.interpolate(img, size=s, mode='bilinear', align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return nn.functional.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def smart_optimizer(model: nn.Module, name: str = 'SGD', lr: float = 0.001, momentum: float = 0.9,
                    decay: float = 1e-5) -> torch.optim.Optimizer:
    """Optimizer with 3 groups: weights with decay, normalization weights and biases without decay."""
    g_bn, g_w, g_b = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if 'Norm' in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == 'bias':
                g_b.append(p)
            elif pname == 'weight' and isinstance(module, norm_types):
                g_bn.append(p)
            else:
                g_w.append(p)
    if name == 'Adam':
        optimizer = torch.optim.Adam(g_b, lr=lr, betas=(momentum, 0.999))
    elif name == 'AdamW':
        optimizer = torch.optim.AdamW(g_b, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == 'RMSProp':
        optimizer = torch.optim.RMSprop(g_b, lr=lr, momentum=momentum)
    elif name == 'SGD':
        optimizer = torch.optim.SGD(g_b, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise NotImplementedError(f'Optimizer {name} not implemented.')
    optimizer.add_param_group({'params': g_w, 'weight_decay': decay})
    optimizer.add_param_group({'params': g_bn, 'weight_decay': 0.0})
    LOGGER.info(f'optimizer: {type(optimizer).__name__}(lr={lr}) with parameter groups '
                f'{len(g_bn)} weight(decay=0.0), {len(g_w)} weight(decay={decay}), {len(g_b)} bias')
    return optimizer


class ModelEMA:
    """Exponential moving average of model weights with a ramped decay d * (1 - exp(-updates / tau)).

    Floating-point state (parameters and buffers) is averaged; ``updates`` counts calls to ``update``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        with torch.no_grad():
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    def update_attr(self, model: nn.Module, include: tuple = (), exclude: tuple = ('process_group', 'reducer')) -> None:
        """Copy plain attributes (e.g. names, hyp, nc) from ``model`` to the EMA copy."""
        for k, v in de_parallel(model).__dict__.items():
            if (include and k not in include) or k.startswith('_') or k in exclude:
                continue
            setattr(self.ema, k, v)


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (0 disables)."""

    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float('inf')

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch = epoch
            self.best_fitness = fitness
        stop = (epoch - self.best_epoch) >= self.patience
        if stop:
            LOGGER.info(f'Stopping training early as no improvement observed in last {self.patience} epochs. '
                        f'Best results observed at epoch {self.best_epoch}, best model saved as best.pt.')
        return stop
