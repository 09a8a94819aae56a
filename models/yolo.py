"""YOLOv5 detection model: the Detect head, DetectionModel (alias Model) and the YAML layer builder.

Usage: ``python models/yolo.py --cfg yolov5s.yaml`` prints the layer table and a summary line.
Module path and attribute names are part of the checkpoint format (../shared/docs/checkpoints.md).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from copy import deepcopy
from pathlib import Path

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from models.common import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, DWConv, Focus
from utils.autoanchor import check_anchor_order
from utils.general import LOGGER, make_divisible, set_logging, yaml_load
from utils.layer_profile import layer_table, time_layer
from utils.plots import feature_visualization
from utils.torch_utils import fuse_conv_and_bn, model_info, scale_img, select_device

MODELS_DIR = Path(__file__).resolve().parent


class Detect(nn.Module):
    """Detection head: a 1x1 conv per level giving na*(5+nc) channels, decoded to pixels in eval mode."""

    def __init__(self, nc: int = 80, anchors: tuple = (), ch: tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: xywh, objectness, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.clear_grids()  # grid / anchor_grid: caches, rebuilt on demand
        self.register_buffer('anchors', torch.tensor(anchors).float().view(self.nl, -1, 2))  # stride units
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.stride = torch.zeros(self.nl)  # set by DetectionModel

    def __setstate__(self, state: dict) -> None:
        # Old pickles: v5.0 kept ``anchor_grid`` as a buffer and cached ``grid`` tensors with the
        # pre-v6 centre convention. Both are caches, never state: drop them and rebuild on demand.
        super().__setstate__(state)
        self._buffers.pop('anchor_grid', None)
        self.__dict__.pop('anchor_grid', None)
        self.clear_grids()
        self.__dict__.setdefault('inplace', True)

    def clear_grids(self) -> None:
        """Empty the grid caches: the next forward rebuilds them from the input's shape (an ONNX trace then records
        the grid as a function of the input size, so a --dynamic export works at every size)."""
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]

    def forward(self, x: list[torch.Tensor]):
        """Train: list of (bs, na, ny, nx, no) raw maps. Eval: (decoded (bs, N, no), raw maps)."""
        if not self.training and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            return self._decode_into(x)
        z = []
        for i in range(self.nl):
            x[i] = self._raw(x[i], i)
            if not self.training:
                self._check_grid(x[i], i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy, wh = self._pixels(xy, wh, i)
                bs, _, ny, nx, _ = x[i].shape
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1), x)

    def _raw(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Level i's 1x1 conv, as (bs, na, ny, nx, no) contiguous raw outputs."""
        x = self.m[i](x)
        bs, _, ny, nx = x.shape
        return x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def _pixels(self, xy: torch.Tensor, wh: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Level i's sigmoid outputs to box centres and sizes in pixels (both decode paths: one formula)."""
        return (xy * 2 + self.grid[i]) * self.stride[i], (wh * 2) ** 2 * self.anchor_grid[i]

    def _check_grid(self, x: torch.Tensor, i: int) -> None:
        """Rebuild level i's grid caches when the raw map x (bs, na, ny, nx, no) changed size, device or dtype."""
        g = self.grid[i]
        if g.shape[2:4] != x.shape[2:4] or g.device != x.device or g.dtype != x.dtype:
            self.grid[i], self.anchor_grid[i] = self._make_grid(x.shape[3], x.shape[2], i, x)

    def _decode_into(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Eval without autograd: the same decode with the same float operations (bitwise the same output), written
        level by level into one preallocated (bs, N, no) tensor instead of split + two concatenations (two or, at
        batch 1, three fewer passes over the largest tensors of the model)."""
        n = sum(self.na * f.shape[2] * f.shape[3] for f in x)  # anchors over all levels
        out, start = None, 0
        for i in range(self.nl):
            x[i] = r = self._raw(x[i], i)
            self._check_grid(r, i)
            bs, na, ny, nx, no = r.shape
            if out is None:
                out = r.new_empty((bs, n, no))
            y = out[:, start:start + na * ny * nx].view(bs, na, ny, nx, no)
            start += na * ny * nx
            if bs == 1:  # same shape and layout as r: the same vectorised loop, so the same last bits
                torch.sigmoid(r, out=y)
            else:  # y is strided over the batch; a sigmoid straight into it would round some tail elements apart
                y.copy_(r.sigmoid())
            xy, wh = y[..., :2], y[..., 2:4]
            pxy, pwh = self._pixels(xy, wh, i)
            xy.copy_(pxy)
            wh.copy_(pwh)
        return out, x

    def _make_grid(self, nx: int, ny: int, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (minus 0.5, so that xy = (2*sigmoid - 0.5 + cell) * stride) and anchor sizes in pixels."""
        d, t = like.device, like.dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing='ij')
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        stride = self.stride[i].to(device=d, dtype=t)
        anchor_grid = (self.anchors[i].to(device=d, dtype=t) * stride).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class BaseModel(nn.Module):
    """Runs the layer list, routing saved outputs to the layers that read them (``f`` / ``save``)."""

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False, visualize: bool | Path = False):
        return self._forward_once(x, profile, visualize)

    @staticmethod
    def _layer_input(m: nn.Module, x, y: list):
        """What layer m reads: the previous output (f == -1), a saved one, or a list of them (Concat, Detect)."""
        if m.f == -1:
            return x
        return y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]

    def _forward_once(self, x: torch.Tensor, profile: bool = False, visualize: bool | Path = False):
        if profile:  # log where the time goes, then run the forward as usual
            LOGGER.info(layer_table(self.profile_layers(x)))
        y = []
        for m in self.model:
            x = self._layer_input(m, x, y)
            x = m(x)
            y.append(x if m.i in self.save else None)
            if visualize:
                feature_visualization(x, m.type, m.i, save_dir=visualize)
        return x

    def profile_layers(self, x: torch.Tensor, runs: int = 10) -> list:
        """Per layer (utils.layer_profile.LayerTime): fastest of ``runs`` calls on its input in a forward of x (ms),
        GFLOPs and params. Runs under the caller's grad mode; ``model(x, profile=True)`` logs it as a table."""
        y, rows = [], []
        for m in self.model:
            x = self._layer_input(m, x, y)
            rows.append(time_layer(m, x, runs))
            x = m(x)  # a list input is _layer_input's own: Detect may write into it
            y.append(x if m.i in self.save else None)
        return rows

    def fuse(self) -> BaseModel:
        """Fold every Conv's BatchNorm into its conv (in place, for inference)."""
        LOGGER.info('Fusing layers... ')
        for m in self.model.modules():
            if isinstance(m, Conv) and hasattr(m, 'bn'):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, 'bn')
        self.info()
        return self

    def info(self, verbose: bool = False, img_size: int = 640) -> tuple:
        """Log the model summary (layers, parameters, gradients, GFLOPs at ``img_size`` pixels)."""
        return model_info(self, verbose, img_size)

    def _apply(self, fn):
        # ``stride`` and the grid caches are plain tensor attributes, not buffers: move/cast them too.
        self = super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect):
            m.stride = fn(m.stride)
            m.grid = [fn(g) for g in m.grid]
            m.anchor_grid = [fn(g) for g in m.anchor_grid]
        if isinstance(getattr(self, 'stride', None), torch.Tensor):
            self.stride = fn(self.stride)
        return self


class DetectionModel(BaseModel):
    """YOLOv5 detector built from a model YAML (file name, path or dict)."""

    def __init__(self, cfg: str | Path | dict = 'yolov5s.yaml', ch: int = 3, nc: int | None = None,
                 anchors: list | None = None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = cfg
        else:
            self.yaml_file = Path(cfg).name
            self.yaml = yaml_load(find_model_yaml(cfg))
        ch = self.yaml['ch'] = self.yaml.get('ch', ch)
        if nc and nc != self.yaml['nc']:
            LOGGER.info(f"Overriding model.yaml nc={self.yaml['nc']} with nc={nc}")
            self.yaml['nc'] = nc
        if anchors:
            LOGGER.info(f'Overriding model.yaml anchors with anchors={anchors}')
            self.yaml['anchors'] = round(anchors)
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.names = {i: f'{i}' for i in range(self.yaml['nc'])}
        self.inplace = self.yaml.get('inplace', True)

        m = self.model[-1]
        if isinstance(m, Detect):
            s = 256  # probe size (pixels) for measuring strides
            m.inplace = self.inplace
            with torch.no_grad():
                m.stride = torch.tensor([s / x.shape[-2] for x in self.forward(torch.zeros(1, ch, s, s))])
            m.anchors /= m.stride.view(-1, 1, 1)  # pixels -> stride units
            check_anchor_order(m)
            self.stride = m.stride
            self._initialize_biases()
        initialize_weights(self)

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False, visualize: bool | Path = False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile, visualize)

    def _forward_augment(self, x: torch.Tensor):
        """Test-time augmentation: scales 1, 0.83, 0.67 with a left-right flip on the middle one."""
        img_size = x.shape[-2:]
        y = []
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = scale_img(x.flip(fi) if fi else x, si, gs=int(self.stride.max()))
            yi = self._forward_once(xi)[0]
            y.append(self._descale_pred(yi, fi, si, img_size))
        y = self._clip_augmented(y)
        return torch.cat(y, 1), None

    def _descale_pred(self, p: torch.Tensor, flips: int | None, scale: float, img_size) -> torch.Tensor:
        p = p.clone()
        p[..., :4] /= scale
        if flips == 2:
            p[..., 1] = img_size[0] - p[..., 1]
        elif flips == 3:
            p[..., 0] = img_size[1] - p[..., 0]
        return p

    def _clip_augmented(self, y: list[torch.Tensor]) -> list[torch.Tensor]:
        """Drop large-object predictions of the full-size pass and small ones of the smallest pass."""
        nl = self.model[-1].nl
        g = sum(4 ** x for x in range(nl))
        e = 1
        i = (y[0].shape[1] // g) * sum(4 ** x for x in range(e))
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * sum(4 ** (nl - 1 - x) for x in range(e))
        y[-1] = y[-1][:, i:]
        return y

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Objectness prior of 8 objects per 640 px image; class prior 0.6 / nc (or frequencies ``cf``)."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)


Model = DetectionModel  # name used by YOLOv5 <= v6.1 checkpoints (pickles reference models.yolo.Model)


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's BatchNorm settings (eps 1e-3, momentum 0.03) and in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def find_model_yaml(cfg: str | Path) -> Path:
    """Resolve a model YAML given as a path or a bare name found in models/ or models/hub/."""
    p = Path(cfg)
    for candidate in (p, MODELS_DIR / p.name, MODELS_DIR / 'hub' / p.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"model config '{cfg}' not found (looked in ., {MODELS_DIR} and {MODELS_DIR / 'hub'})")


# Layer registry: the names a model YAML may use. No eval() of YAML strings.
MODULES: dict[str, type[nn.Module]] = {
    'Conv': Conv, 'DWConv': DWConv, 'Bottleneck': Bottleneck, 'BottleneckCSP': BottleneckCSP, 'C3': C3,
    'SPP': SPP, 'SPPF': SPPF, 'Focus': Focus, 'Concat': Concat, 'Detect': Detect,
    'nn.Upsample': nn.Upsample, 'nn.BatchNorm2d': nn.BatchNorm2d, 'nn.Identity': nn.Identity,
}
_CHANNEL_MODULES = {Conv, DWConv, Bottleneck, BottleneckCSP, C3, SPP, SPPF, Focus}  # args[0] = c2
_REPEAT_MODULES = {BottleneckCSP, C3}  # take the repeat count n as their 3rd argument


def _resolve_arg(a, symbols: dict):
    """YAML argument -> value: known symbols ('nc', 'anchors', 'None') are substituted, other strings kept."""
    if isinstance(a, str):
        if a in symbols:
            return symbols[a]
        with contextlib.suppress(ValueError):
            return float(a) if '.' in a else int(a)
    return a


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a model dict; returns (nn.Sequential, sorted save indices)."""
    LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    anchors, nc, gd, gw = d['anchors'], d['nc'], d['depth_multiple'], d['width_multiple']
    if d.get('activation'):
        LOGGER.warning(f"WARNING ⚠️ model.yaml 'activation: {d['activation']}' is not supported; using SiLU")
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    symbols = {'nc': nc, 'anchors': anchors, 'None': None, 'True': True, 'False': False}
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, name, args) in enumerate(d['backbone'] + d['head']):
        if name not in MODULES:
            raise ValueError(f"model.yaml layer {i}: unknown module '{name}'; known: {', '.join(MODULES)}")
        m = MODULES[name]
        args = [_resolve_arg(a, symbols) for a in args]
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        if m in _CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in _REPEAT_MODULES:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # number of anchors -> placeholder anchor list
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        t = f'{m.__module__}.{m.__name__}'
        np_ = sum(x.numel() for x in m_.parameters())
        m_.i, m_.f, m_.type, m_.np = i, f, t, np_
        LOGGER.info(f'{i:>3}{str(f):>18}{n_:>3}{np_:10.0f}  {t:<40}{str(args):<30}')
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Build a YOLOv5 model from its YAML and print a summary')
    parser.add_argument('--cfg', type=str, default='yolov5s.yaml', help='model.yaml')
    parser.add_argument('--batch-size', type=int, default=1, help='batch size for the test forward pass')
    parser.add_argument('--imgsz', '--img', '--img-size', type=int, default=640, help='image size (pixels)')
    parser.add_argument('--device', default='cpu', help='cuda device, i.e. 0 or cpu')
    parser.add_argument('--line-profile', action='store_true', help='time every layer (fastest of 10 runs, ms) '
                        'and count its GFLOPs on the test input')
    parser.add_argument('--verbose', action='store_true', help='print every parameter')
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    set_logging()
    device = select_device(opt.device)
    try:
        model = DetectionModel(opt.cfg).to(device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}')
    model.eval()
    model_info(model, opt.verbose, opt.imgsz)
    im = torch.rand(opt.batch_size, 3, opt.imgsz, opt.imgsz, device=device)
    with torch.no_grad():
        y = model(im, profile=opt.line_profile)[0]
    LOGGER.info(f'forward OK: input {tuple(im.shape)} -> predictions {tuple(y.shape)}')


if __name__ == '__main__':
    main(parse_opt())
