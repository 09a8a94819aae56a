"""Tests for utils/compression/deep/sparse_format.py: bit-exact round trips, hand-worked byte layouts, sizes, safe loading, corruption."""

import io

import pytest
import torch
from torch import nn

from utils.compression.deep.sparse_format import (CODECS, compact_state_dict, decode_sparse, encode_sparse,
                                                  encoded_nbytes, expand_state_dict, is_sparse_encoded)


def same_bits(a, b):
    """Equal dtype, shape and bit patterns (torch.equal says -0.0 == 0.0 and NaN != NaN)."""
    size = a.element_size()
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def sparse_randn(shape, density, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).masked_fill(torch.rand(shape, generator=g) >= density, 0).to(dtype)


# ------------------------------------------------------------------------------------------------ golden bytes
def test_golden_layout():
    t = torch.tensor([0.0, 1.5, 0.0, -2.0], dtype=torch.float16)
    e = encode_sparse(t, 'none')
    assert e['mask'].tolist() == [0b1010]  # entries 1 and 3 set, little bit order
    # 1.5 = 0x3E00, -2 = 0xC000: low-byte plane (00 00) then high-byte plane (3E C0)
    assert e['values'].tolist() == [0x00, 0x00, 0x3E, 0xC0]
    assert (e['shape'], e['dtype'], e['nnz'], e['neg_zeros'].numel(), e['sparse_format']) == ([4], 'float16', 2, 0, 1)
    assert encoded_nbytes(e) == 5
    assert same_bits(decode_sparse(e), t)


def test_golden_negative_zeros():
    t = torch.tensor([-0.0, 0.0, 1.0, -0.0], dtype=torch.float32)
    e = encode_sparse(t, 'none')
    assert e['mask'].tolist() == [0b0100] and e['nnz'] == 1
    assert e['neg_zeros'].tolist() == [0b101]  # zeros in order: -0, +0, -0
    assert same_bits(decode_sparse(e), t)


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize('codec', CODECS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_round_trip_bit_exact(codec, dtype):
    t = sparse_randn((8, 4, 3, 3), 0.4, dtype)
    flat = t.view(-1)
    flat[:6] = torch.tensor([float('nan'), float('inf'), -float('inf'), -0.0, torch.finfo(dtype).tiny / 4, -1e-30],
                            dtype=torch.float64).to(dtype)  # NaN, infinities, -0.0, subnormal, underflow to -0.0
    d = decode_sparse(encode_sparse(t, codec))
    assert same_bits(d, t)


@pytest.mark.parametrize('t', [torch.zeros(5, 3), torch.ones(7), torch.tensor(2.5), torch.empty(0, 3),
                               torch.full((9,), -0.0), sparse_randn((3, 5), 0.5).t()])  # last: non-contiguous
def test_round_trip_edge_cases(t):
    assert same_bits(decode_sparse(encode_sparse(t)), t.contiguous())


def test_mul_pruned_weights_keep_their_sign():
    """torch.nn.utils.prune multiplies by the mask: negative pruned weights become -0.0, which must survive."""
    w = torch.randn(64, 32, 3, 3).half()
    pruned = w * (w.abs() > 0.67)
    e = encode_sparse(pruned)
    assert e['neg_zeros'].numel() > 0
    assert same_bits(decode_sparse(e), pruned)


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize('sparsity, limit', [(0.5, 0.60), (0.9, 0.20)])
def test_size_targets(sparsity, limit):
    t = sparse_randn((128, 128, 3, 3), 1 - sparsity)
    ratio = encoded_nbytes(encode_sparse(t)) / (t.numel() * 2)
    assert ratio <= limit
    # uncompressed bound: 1 mask bit + 16 value bits per non-zero, per 16 dense bits
    assert encoded_nbytes(encode_sparse(t, 'none')) == t.numel() // 8 + 2 * int((t != 0).sum())


# ------------------------------------------------------------------------------------------------ state dicts
def test_state_dict_round_trip_and_safe_load(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 32, 3))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.3)
    model[1].running_mean.uniform_()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    compact = compact_state_dict(state)
    assert is_sparse_encoded(compact['0.weight'])
    assert not is_sparse_encoded(compact_state_dict(state, 'none')['2.weight'])  # dense: encoding would not shrink it
    assert compact['1.num_batches_tracked'] is state['1.num_batches_tracked']
    f = tmp_path / 'compact.pt'
    torch.save({'model_state': compact, 'epoch': -1}, f)
    from utils.checkpoint import load  # the project's allow-listed loader: plain dicts/bytes/lists only
    loaded = expand_state_dict(load(f)['model_state'])
    assert loaded.keys() == state.keys()
    assert all(same_bits(loaded[k], v) if v.is_floating_point() else torch.equal(loaded[k], v) for k, v in state.items())
    buf = io.BytesIO()
    torch.save(compact, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # plain weights-only torch.load works too


# ------------------------------------------------------------------------------------------------ user errors
def test_encode_errors():
    with pytest.raises(ValueError, match='floating'):
        encode_sparse(torch.arange(4))
    with pytest.raises(ValueError, match='codec'):
        encode_sparse(torch.ones(4), 'gzip')


@pytest.mark.parametrize('change', [
    lambda e: e.update(mask=e['mask'][:-1]),  # truncated payload
    lambda e: e.update(values=torch.cat([e['values'], torch.zeros(2, dtype=torch.uint8)])),  # trailing data
    lambda e: e.update(values=e['values'].numpy().tobytes()),  # not a tensor
    lambda e: e.update(neg_zeros=None),
    lambda e: e.update(nnz=e['nnz'] - 1),  # header disagrees with mask
    lambda e: e.update(nnz=10**12),
    lambda e: e.update(dtype='int8'),
    lambda e: e.update(codec='gzip'),
    lambda e: e.update(shape=[3]),
    lambda e: e.pop('values'),
    lambda e: e.update(sparse_format=2),
])
def test_decode_rejects_corrupt(change):
    e = encode_sparse(sparse_randn((40, 10), 0.5, torch.float32), 'zlib')
    change(e)
    with pytest.raises(ValueError, match='sparse tensor encoding'):
        decode_sparse(e)
