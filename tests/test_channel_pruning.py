"""Channel pruning: dependency groups, coupling rules, golden equivalence, every shipped YAML, checkpoints."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from models.common import C3, Bottleneck, Conv
from models.experimental import attempt_load
from models.yolo import Detect, DetectionModel
from utils.checkpoint import load, make_checkpoint, save
from utils.compression.channel.groups import ChannelPruningError, channel_groups
from utils.compression.channel.pruning import (amount_for_flops, channel_importance, prunable_channels, prune_channels,
                                               resized_layers, select_channels, shrink, shrink_zero_channels,
                                               zero_channel_fraction, zero_channels)

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p.name for p in (ROOT / 'models').glob('yolov5*.yaml')) + \
    sorted(p.name for p in (ROOT / 'models' / 'hub').glob('yolov5*.yaml'))


@pytest.fixture(scope='module')
def v5n() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel('yolov5n.yaml', nc=3).eval()


def group_of(groups, name):
    return next(g for g in groups if any(p.name == name for p in g.producers))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Trained-like BN statistics so that channels differ and outputs depend on every channel."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


# ---------------------------------------------------------------------------------------------------- grouping
def test_c3_residual_chain_is_one_group(v5n):
    """model.2 is C3(n=1, shortcut): its cv1 output and the bottleneck's cv2 output are added: one group."""
    g = group_of(channel_groups(v5n), 'model.2.cv1.conv')
    assert {p.name for p in g.producers} == {'model.2.cv1.conv', 'model.2.m.0.cv2.conv'}
    readers = {c.name for c in g.consumers}
    assert {'model.2.m.0.cv1.conv', 'model.2.cv3.conv'} <= readers  # the bottleneck and the C3 concat read it
    assert not g.frozen


def test_head_c3_without_shortcut_is_not_tied(v5n):
    groups = channel_groups(v5n)
    g = group_of(groups, 'model.13.cv1.conv')  # head C3 (shortcut False): no residual add
    assert [p.name for p in g.producers] == ['model.13.cv1.conv']


def test_sppf_reader_sees_producer_four_times(v5n):
    g = group_of(channel_groups(v5n), 'model.9.cv1.conv')
    reader = next(c for c in g.consumers if c.name == 'model.9.cv2.conv')
    assert len(reader.inputs) == 4 and all(p is reader.inputs[0] for p in reader.inputs)


def test_detect_outputs_are_never_producers_and_input_is_frozen(v5n):
    groups = channel_groups(v5n)
    names = {p.name for g in groups for p in g.producers}
    assert not any(n.startswith('model.24.m.') for n in names)
    frozen = [g for g in groups if g.frozen]
    assert [g.frozen for g in frozen] == ['input image']
    detect_readers = {c.name for g in groups for c in g.consumers if c.name.startswith('model.24.m.')}
    assert detect_readers == {'model.24.m.0', 'model.24.m.1', 'model.24.m.2'}


def test_unknown_module_is_a_one_line_error(v5n):
    class Mystery(nn.Module):
        def forward(self, x):
            return x

    m = copy.deepcopy(v5n)
    mystery = Mystery()
    mystery.f, mystery.i = -1, 5
    m.model[5] = mystery
    with pytest.raises(ChannelPruningError, match="does not know module '.*Mystery' \\(model.5\\)"):
        channel_groups(m)


def test_grouped_conv_freezes_what_it_touches():
    torch.manual_seed(0)
    cfg = {'nc': 2, 'depth_multiple': 1.0, 'width_multiple': 1.0, 'anchors': [[10, 13, 16, 30, 33, 23]],
           'backbone': [[-1, 1, 'Conv', [16, 3, 2]], [-1, 1, 'DWConv', [16, 3, 1]], [-1, 1, 'Conv', [32, 3, 2]]],
           'head': [[[2], 1, 'Detect', ['nc', 'anchors']]]}
    m = DetectionModel(cfg).eval()
    groups = channel_groups(m)
    why = {g.name: g.frozen for g in groups}
    assert why['model.0.conv'].startswith('read by grouped conv') and why['model.1.conv'].startswith('output of')
    assert why['model.2.conv'] == ''
    x = torch.rand(1, 3, 64, 64)
    prune_channels(m, 0.5)
    assert m.model[0].conv.out_channels == 16 and m.model[2].conv.out_channels == 16
    assert m(x)[0].shape == (1, 3 * 16 * 16, 7)


# ---------------------------------------------------------------------------------------------------- coupling
def test_residual_group_loses_the_same_channels_everywhere(v5n):
    m = copy.deepcopy(v5n)
    g = group_of(channel_groups(m), 'model.4.cv1.conv')  # C3 with 2 bottlenecks in yolov5n: 3 members
    assert len(g.producers) == 3
    n = g.channels
    for k, p in enumerate(g.producers):  # gamma encodes (member, channel); distinct random importance
        p.bn.weight.data = torch.arange(n, dtype=torch.float) + 1000 * k
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(1)).float()
    keep = torch.zeros(n, dtype=torch.bool)
    keep[scores.topk(n // 2).indices] = True
    groups = channel_groups(m)
    masks = [keep if gr.name == g.name else torch.ones(gr.channels, dtype=torch.bool) for gr in groups]
    shrink(groups, masks)
    kept = torch.nonzero(keep).flatten().float()
    for k, p in enumerate(g.producers):
        assert torch.equal(p.bn.weight.data - 1000 * k, kept), p.name
    assert m.model[4].m[0].cv1.conv.in_channels == n // 2
    assert m.model[4].cv3.conv.in_channels == n // 2 + m.model[4].cv2.conv.out_channels
    assert m(torch.rand(1, 3, 64, 64))[0].shape[-1] == 8


def test_layer_scope_prunes_each_group_and_never_empties(v5n):
    groups = channel_groups(v5n)
    scores = [channel_importance(g) for g in groups]
    keep = select_channels(groups, scores, 0.99, 'layer')
    for g, k in zip(groups, keep):
        assert int(k.sum()) == (g.channels if g.frozen else max(g.channels - round(0.99 * g.channels), 1))
    keep = select_channels(groups, scores, 0.99, 'global')
    assert all(int(k.sum()) >= 1 for k in keep)


def test_channel_multiple_follows_the_kernel_width():
    from utils.compression.channel.pruning import channel_multiple, resolve_round

    avx512 = torch.backends.cpu.get_cpu_capability().startswith('AVX512')
    assert channel_multiple('cpu') == channel_multiple(torch.device('cpu')) == (16 if avx512 else 8)
    assert channel_multiple('0') == channel_multiple('cuda:1') == channel_multiple(torch.device('cuda', 0)) == 8
    assert channel_multiple('') == (8 if torch.cuda.is_available() else channel_multiple('cpu'))
    assert resolve_round('auto', 'cpu') == channel_multiple('cpu') and resolve_round(4, 'cpu') == 4


def test_round_to_keeps_multiples_of_8(v5n):
    m = copy.deepcopy(v5n)
    prune_channels(m, 0.37, scope='global', importance='bn', round_to=8)
    for g in channel_groups(m):
        if not g.frozen:
            assert g.channels % 8 == 0, (g.name, g.channels)


def test_global_scope_prunes_exactly_amount_of_all_channels(v5n):
    m = copy.deepcopy(v5n)
    randomize_bn(m)
    before = prunable_channels(channel_groups(m))
    r = prune_channels(m, 0.4, scope='global', importance='bn')
    assert r.channels_before == before and r.channels_after == before - round(0.4 * before)


def test_bad_arguments_are_value_errors(v5n):
    m = copy.deepcopy(v5n)
    for kw, words in (({'amount': 1.0}, 'amount'), ({'amount': 0.3, 'scope': 'tensor'}, 'scope'),
                      ({'amount': 0.3, 'importance': 'l2'}, 'importance'), ({'amount': 0.3, 'round_to': 0}, 'round_to')):
        with pytest.raises(ValueError, match=words):
            prune_channels(m, **kw)


# ------------------------------------------------------------------------------------------------------ golden
@pytest.mark.parametrize('source', ['yolov5n.yaml', 'yolov5n6.yaml', 'yolov5s-v5.0.pt'])
def test_removing_zero_output_channels_keeps_outputs(source, upstream_dir):
    """Golden: channels whose BN scale and shift are 0 output 0; removing them (with every reader's input slice,
    Concat offsets and SPP/SPPF repeats) must leave the detections unchanged, unfused and fused."""
    torch.manual_seed(0)
    if source.endswith('.pt'):  # YOLOv5 v5.0: Focus stem and SPP
        m = attempt_load(upstream_dir / source, fuse=False)
    else:
        m = DetectionModel(source, nc=3).eval()
        randomize_bn(m)
    groups = channel_groups(m)
    g = torch.Generator().manual_seed(2)
    keep = [torch.ones(x.channels, dtype=torch.bool) if x.frozen else torch.rand(x.channels, generator=g) > 0.4
            for x in groups]
    for k in keep:
        k[0] = True
    zero_channels(groups, keep)
    x = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        y0 = m(x)[0]
        assert zero_channel_fraction(m) == pytest.approx(
            sum(int((~k).sum()) for k in keep) / prunable_channels(groups))
        params = sum(p.numel() for p in m.parameters())
        report = shrink_zero_channels(m)
        assert report.params_after < params and zero_channel_fraction(m) == 0
        y1 = m(x)[0]
        m.fuse()
        y2 = m(x)[0]
    scale = y0.abs().max()
    assert (y1 - y0).abs().max() <= 1e-5 * scale and (y2 - y0).abs().max() <= 1e-5 * scale


# ------------------------------------------------------------------------------------------- every shipped YAML
@pytest.mark.parametrize('cfg', YAMLS)
def test_every_shipped_yaml_prunes_fuses_and_runs(cfg):
    """Each YAML's real layer graph (its depth_multiple: number of bottlenecks, P5/P6 heads); widths scaled to
    1/8 so the 10 models build in seconds (width changes channel counts, not the graph)."""
    from models.yolo import find_model_yaml
    from utils.general import yaml_load

    torch.manual_seed(0)
    d = yaml_load(find_model_yaml(cfg))
    d['width_multiple'] = d['width_multiple'] / 8
    model = DetectionModel(d, nc=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        shape = model(x)[0].shape
        for amount, scope, importance, r in ((0.3, 'layer', 'l1', 1), (0.5, 'global', 'bn', 8),
                                             (0.7, 'layer', 'bn', 1)):
            m = copy.deepcopy(model)
            report = prune_channels(m, amount, scope, importance, r)
            assert report.params_after < report.params_before
            assert m(x)[0].shape == shape
            detect = m.model[-1]
            assert all(c.out_channels == detect.na * detect.no for c in detect.m)  # Detect outputs untouched
        m.fuse()
        assert m(x)[0].shape == shape


def test_half_precision_forward_after_pruning(v5n):
    m = copy.deepcopy(v5n)
    prune_channels(m, 0.5)
    m.fuse()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    m = m.to(device).half()
    try:
        y = m(torch.rand(1, 3, 64, 64, device=device).half())[0]
    except RuntimeError as e:  # some CPU builds have no FP16 convolution
        pytest.skip(f'FP16 convolution not available on {device}: {e}')
    assert y.dtype == torch.half and torch.isfinite(y).all()


def test_amount_for_flops_hits_ratio(v5n):
    from utils.torch_utils import model_flops

    a = amount_for_flops(v5n, 0.5, imgsz=64)
    m = copy.deepcopy(v5n)
    prune_channels(m, a)
    assert abs(model_flops(m, 64) / model_flops(v5n, 64) - 0.5) <= 0.01


# ------------------------------------------------------------------------------------------------- checkpoints
def test_pruned_checkpoint_round_trip_and_training_copy(v5n, tmp_path):
    from utils.compression.channel.pruning import pruned_model_for_training

    m = copy.deepcopy(v5n)
    prune_channels(m, 0.3)
    f = tmp_path / 'pruned.pt'
    save(make_checkpoint(m), f)
    loaded = attempt_load(f, fuse=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], m(x)[0], rtol=1e-2, atol=1e-2)  # FP16 round trip
    full = DetectionModel(copy.deepcopy(loaded.yaml))
    assert resized_layers(loaded, full) > 0 and resized_layers(full, full) == 0
    trainable = pruned_model_for_training(load(f)['model'], nc=5)
    assert trainable.model[-1].nc == 5 and all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    out = trainable(x)
    assert out[0].shape[-1] == 10
    assert resized_layers(trainable, DetectionModel(copy.deepcopy(trainable.yaml))) == resized_layers(loaded, full)


def test_c3_and_bottleneck_classes_stay_plain(v5n):
    """A pruned model is the same classes with smaller tensors (what upstream unpickles)."""
    m = copy.deepcopy(v5n)
    prune_channels(m, 0.5)
    assert type(m.model[2]) is C3 and type(m.model[2].m[0]) is Bottleneck and type(m.model[0]) is Conv
    assert type(m.model[-1]) is Detect and m.model[2].m[0].add


def test_group_importance_counts_producers_bn_and_reader_slices(v5n):
    """'group' (Torch-Pruning's group L1): a channel that is 0 in its filters, BN scale and every reader's input slice
    (at each Concat/SPPF offset) scores 0; zeroing only the readers' slices lowers its score."""
    m = copy.deepcopy(v5n)
    randomize_bn(m)
    g = group_of(channel_groups(m), 'model.8.cv1.conv')  # read by C3 internals and SPPF-side convs
    before = channel_importance(g, 'group')
    with torch.no_grad():
        for c in g.consumers:
            offset = 0
            for p in c.inputs:
                if p in g.producers and isinstance(c.module, nn.Conv2d):
                    c.module.weight[:, offset + 3] = 0
                offset += p.channels
    after = channel_importance(g, 'group')
    assert after[3] < 0.8 * before[3] and torch.allclose(after[:3], before[:3], rtol=0.02)  # others: only the mean moves
    with torch.no_grad():
        for p in g.producers:
            p.conv.weight[3] = 0
            p.bn.weight[3] = 0
    assert channel_importance(g, 'group')[3] == 0
    prune_channels(copy.deepcopy(m), 0.3, importance='group')
