"""Channel dependency groups of a YOLOv5 model: which output channels must be removed together.

Structured (channel) pruning removes whole output channels of a convolution and the matching input slices of
every layer that reads them. In YOLOv5 some channels are tied together:

- the residual add of a Bottleneck (``x + cv2(cv1(x))``) ties cv2's outputs to the channels of ``x``; inside a
  C3 block all bottlenecks and the C3's cv1 therefore form one group;
- a Concat (C3's inner concat, SPPF/SPP's pyramid, the head's Concat layers) makes one consumer read several
  producers at channel offsets, so pruning a producer removes a slice at that offset (SPPF's cv2 reads cv1's
  channels four times);
- the Detect head reads its inputs but its own outputs (na * (5 + nc) per level) never change;
- the input image and anything feeding or produced by a grouped convolution stay as they are.

`channel_groups(model)` finds these groups once by walking the layer list the way ``BaseModel._forward_once``
routes tensors (``m.f``), without running the model: a *channel map* (the list of producers whose channels are
concatenated in a tensor) is propagated through every module YOLOv5 builds. A module the walk does not know
raises `ChannelPruningError` naming it. The result is plain data (`Producer`, `Consumer`, `ChannelGroup`); the
importance, the selection and the editing live in utils/compression/channel/pruning.py (the Torch-Pruning DepGraph split:
grouping, importance and pruning are separate parts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from models.common import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, Focus
from models.yolo import Detect
from utils.compression.layers import de_parallel


class ChannelPruningError(ValueError):
    """A model the channel pruner cannot handle (one line, names the module)."""


@dataclass(eq=False)
class Producer:
    """The output channels made by one layer: a conv (its output dim) and the BatchNorm that follows it, if any."""

    name: str  # module name of the conv, e.g. 'model.2.m.0.cv2.conv'
    channels: int
    conv: nn.Conv2d | None = None  # None for the input image
    bn: nn.BatchNorm2d | None = None
    frozen: str = ''  # why these channels may not be pruned ('' = prunable)


@dataclass(eq=False)
class Consumer:
    """A layer that reads a channel map along its input dimension (a conv's in-channels, a BN's features)."""

    name: str
    module: nn.Module  # nn.Conv2d or nn.BatchNorm2d
    inputs: list[Producer]  # concatenated along channels, in order


@dataclass(eq=False)
class ChannelGroup:
    """Producers whose channel i is one and the same channel; pruning channel i edits every member and reader."""

    producers: list[Producer]
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.producers[0].channels

    @property
    def frozen(self) -> str:
        """Why the group may not be pruned ('' when it may)."""
        return next((p.frozen for p in self.producers if p.frozen), '')

    @property
    def name(self) -> str:
        return self.producers[0].name


class _Tracer:
    """Walks the modules of a YOLOv5 model, creating producers, consumers and residual ties."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        self.names = names
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.parent: dict[Producer, Producer] = {}  # union-find over producers tied by residual adds

    # ---- bookkeeping
    def produce(self, conv: nn.Conv2d | None, bn: nn.BatchNorm2d | None, channels: int, frozen: str = '') -> Producer:
        p = Producer(self.names.get(conv, 'input') if conv is not None else 'input', channels, conv, bn, frozen)
        self.producers.append(p)
        self.parent[p] = p
        return p

    def find(self, p: Producer) -> Producer:
        while self.parent[p] is not p:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def tie(self, a: list[Producer], b: list[Producer], where: nn.Module) -> None:
        """Residual add of two channel maps: channel i of each is the same channel."""
        if len(a) != 1 or len(b) != 1 or a[0].channels != b[0].channels:
            raise ChannelPruningError(f'channel pruning: residual add in {self.names.get(where, where)} joins '
                                      f'tensors of unequal layout; this model is not supported')
        ra, rb = self.find(a[0]), self.find(b[0])
        if ra is not rb:
            self.parent[rb] = ra

    def consume(self, module: nn.Module, inputs: list[Producer]) -> None:
        width = sum(p.channels for p in inputs)
        expected = module.in_channels if isinstance(module, nn.Conv2d) else module.num_features
        if width != expected:
            raise ChannelPruningError(f'channel pruning: {self.names.get(module, module)} reads {expected} channels '
                                      f'but the traced input has {width}; this model is not supported')
        if isinstance(module, nn.Conv2d) and module.groups > 1:  # grouped conv: its inputs keep their layout
            for p in inputs:
                p.frozen = p.frozen or f'read by grouped conv {self.names.get(module)}'
        self.consumers.append(Consumer(self.names.get(module, '?'), module, list(inputs)))

    # ---- modules
    def conv(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: list[Producer]) -> list[Producer]:
        self.consume(conv, x)
        frozen = f'output of grouped conv {self.names.get(conv)}' if conv.groups > 1 else ''
        return [self.produce(conv, bn, conv.out_channels, frozen)]

    def module(self, m: nn.Module, x: list[Producer] | list[list[Producer]]) -> list[Producer]:
        """Channel map of ``m(x)`` (``x`` is a list of maps for Concat and Detect)."""
        t = type(m)
        if isinstance(m, Conv):  # Conv, DWConv
            return self.conv(m.conv, getattr(m, 'bn', None), x)
        if t is nn.Conv2d:
            return self.conv(m, None, x)
        if t is Bottleneck:
            y = self.module(m.cv2, self.module(m.cv1, x))
            if m.add:
                self.tie(x, y, m)
            return y
        if t is C3:
            return self.module(m.cv3, self.module(m.m, self.module(m.cv1, x)) + self.module(m.cv2, x))
        if t is SPPF:
            y = self.module(m.cv1, x)
            return self.module(m.cv2, y * 4)
        if t is SPP:
            y = self.module(m.cv1, x)
            return self.module(m.cv2, y * (len(m.m) + 1))
        if t is Focus:  # space-to-depth: 4 slices of the input stacked on channels
            return self.module(m.conv, x * 4)
        if t is BottleneckCSP:  # cv2/cv3 are plain convs normalised by one shared BN: keep their channels
            y1 = self.module(m.m, self.module(m.cv1, x))
            self.consume(m.cv3, y1)
            self.consume(m.cv2, x)
            why = f'inside BottleneckCSP {self.names.get(m)}'
            y = [self.produce(m.cv3, None, m.cv3.out_channels, why), self.produce(m.cv2, None, m.cv2.out_channels, why)]
            self.consume(m.bn, y)
            return self.module(m.cv4, y)
        if t is Concat:
            if m.d != 1:
                raise ChannelPruningError(f'channel pruning: {self.names.get(m)} concatenates along dim {m.d}')
            return [p for xi in x for p in xi]
        if t is nn.BatchNorm2d:
            self.consume(m, x)
            return x
        if t in (nn.Upsample, nn.MaxPool2d, nn.Identity, nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Hardswish):
            return x
        if t is nn.Sequential:
            for sub in m:
                x = self.module(sub, x)
            return x
        if isinstance(m, Detect):
            for conv, xi in zip(m.m, x):
                self.consume(conv, xi)
            return []
        raise ChannelPruningError(f"channel pruning does not know module '{t.__module__}.{t.__name__}' "
                                  f"({self.names.get(m, '?')}); supported: Conv, C3, Bottleneck, SPPF, SPP, Focus, "
                                  f'BottleneckCSP, Concat, Upsample, Detect')

    def groups(self) -> list[ChannelGroup]:
        by_root: dict[Producer, ChannelGroup] = {}
        for p in self.producers:
            by_root.setdefault(self.find(p), ChannelGroup([])).producers.append(p)
        owner = {p: by_root[self.find(p)] for p in self.producers}
        for c in self.consumers:
            for g in dict.fromkeys(owner[p] for p in c.inputs):  # each reader once per group
                g.consumers.append(c)
        return list(by_root.values())


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """All channel groups of a YOLOv5 DetectionModel (unfused or fused), frozen ones included, in layer order.

    Raises ChannelPruningError (one line) for a model or module the walk does not know.
    """
    model = de_parallel(model)
    layers = getattr(model, 'model', None)
    if not isinstance(layers, nn.Sequential) or not all(hasattr(m, 'f') for m in layers):
        raise ChannelPruningError(f'channel pruning needs a YOLOv5 DetectionModel, got {type(model).__name__}')
    tracer = _Tracer({m: n for n, m in model.named_modules()})
    ch = model.yaml.get('ch', 3) if isinstance(getattr(model, 'yaml', None), dict) else 3
    x = [tracer.produce(None, None, ch, frozen='input image')]
    outputs: list[list[Producer]] = []
    for m in layers:
        if m.f != -1:
            x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
        x = tracer.module(m, x)
        outputs.append(x)
    return tracer.groups()
