"""Compact storage of sparse (pruned) tensors: a packed bitmask of the non-zero entries plus their values.

`encode_sparse(t)` returns a dict of plain objects only (str, int, list of int, 1-D uint8 tensors), so a checkpoint
holding it stays loadable by torch's weights-only unpickler (utils/checkpoint.py's safe loader) with no new
allow-listed class. Payloads are uint8 tensors rather than `bytes` because torch.save pickles with protocol 2,
which writes bytes as a latin-1 string re-encoded as UTF-8 (~1.5x larger for compressed data) and an empty
bytes object as a call to builtins.bytes (refused by the safe loader); tensor storages are written raw. `decode_sparse(d)` rebuilds the tensor bit-exactly (same dtype, shape and bits: -0.0 and NaN
payloads included).

Layout (version 1):
    mask   = packbits(flat tensor != 0), little bit order, then compressed
    values = the non-zero entries in the tensor's own dtype (FP16 for saved checkpoints), little-endian, bytes
             split into planes (all first bytes, then all second bytes: sign/exponent bytes compress far better
             apart from the noisy mantissa bytes), then compressed
    neg_zeros = packbits(sign bit of each zero entry), compressed; empty when there is no -0.0
Dense FP16 costs 16 bits per weight; this costs about 1 + 16 * density bits before compression, so it pays off
above ~6% sparsity. `compact_state_dict` therefore keeps a tensor dense whenever encoding would not shrink it.
"""
from __future__ import annotations

import lzma
import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT_KEY = 'sparse_format'  # marks an encoded tensor; its value is the layout version
VERSION = 1
CODECS = ('zlib', 'lzma', 'none')
FLOAT_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32, 'float64': torch.float64}
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size integer view of each float dtype, by bytes


def _compress(data: bytes, codec: str) -> bytes:
    if codec == 'zlib':
        return zlib.compress(data, 6)  # level 9 is ~30% slower for <0.2% smaller files here
    if codec == 'lzma':
        return lzma.compress(data, preset=6)
    return data


def _decompress(data: bytes, codec: str, size: int) -> bytes:
    """Decompress to exactly `size` bytes (known from the header); anything else is a corrupt payload.
    Output stops one byte past `size`, so a forged stream cannot balloon in memory."""
    if codec == 'none':
        out, complete = bytes(data), True
    else:
        d = zlib.decompressobj() if codec == 'zlib' else lzma.LZMADecompressor()
        out = d.decompress(data, size + 1)
        complete = d.eof and not d.unused_data  # whole stream (checksum included) read, nothing after it
    if len(out) != size or not complete:
        raise ValueError(f'payload is {"truncated" if not complete else f"{len(out)} bytes"}, expected {size} bytes')
    return out


def is_sparse_encoded(obj: Any) -> bool:
    """True for a dict made by `encode_sparse`."""
    return isinstance(obj, dict) and FORMAT_KEY in obj


def _payload(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, np.uint8).copy())


def _read(payload: Any, codec: str, size: int) -> bytes:
    if not isinstance(payload, Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
        raise TypeError(f'payload must be a 1-D uint8 tensor, got {type(payload).__name__}')
    return _decompress(payload.cpu().numpy().tobytes(), codec, size)


def _pack(flags: np.ndarray, codec: str) -> Tensor:
    return _payload(_compress(np.packbits(flags, bitorder='little').tobytes(), codec))


def _unpack(payload: Tensor, codec: str, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(_read(payload, codec, (count + 7) // 8), np.uint8), count=count,
                         bitorder='little')
    return bits.view(bool)


def encode_sparse(tensor: Tensor, codec: str = 'zlib') -> dict[str, Any]:
    """Encode a float tensor as {sparse_format, shape, dtype, codec, nnz, mask, values, neg_zeros}.

    Payloads (mask, values, neg_zeros) are 1-D uint8 tensors holding the compressed bytes.

    mask flags the entries != 0; values holds them (raw bits, byte planes); neg_zeros flags which zeros are -0.0
    (empty tensor unless some are: weights zeroed by multiplication, e.g. torch.nn.utils.prune, carry the sign).
    codec: 'zlib' (default), 'lzma' (smaller, slower) or 'none'. Sizes: see the module docstring.
    """
    if codec not in CODECS:
        raise ValueError(f'codec must be one of {CODECS}, got {codec!r}')
    name = str(tensor.dtype).removeprefix('torch.')
    if name not in FLOAT_DTYPES:
        raise ValueError(f'encode_sparse stores floating tensors {tuple(FLOAT_DTYPES)}, got {tensor.dtype}')
    # numpy on the raw bit patterns (NaN payloads survive; single-threaded numpy is faster than torch's thread
    # pool for the many small tensors of a checkpoint)
    t = tensor.detach().cpu().contiguous().view(-1)
    bits = t.view(INT_VIEW[t.element_size()]).numpy()
    keep = (bits & np.iinfo(bits.dtype).max) != 0  # all bits but the sign: +0.0 and -0.0 are the zeros
    values = bits[keep]
    values = values.astype(values.dtype.newbyteorder('<'), copy=False)  # stored little-endian
    planes = values.view(np.uint8).reshape(-1, t.element_size()).T  # byte planes, see module docstring
    neg_zeros = bits[~keep] < 0  # sign bit set on a zero
    return {FORMAT_KEY: VERSION,
            'shape': list(tensor.shape),
            'dtype': name,
            'codec': codec,
            'nnz': int(values.size),
            'mask': _pack(keep, codec),
            'values': _payload(_compress(np.ascontiguousarray(planes).tobytes(), codec)),
            'neg_zeros': _pack(neg_zeros, codec) if bool(neg_zeros.any()) else _payload(b'')}


def decode_sparse(data: dict[str, Any]) -> Tensor:
    """Rebuild the CPU tensor encoded by `encode_sparse`, bit-exactly. Raises ValueError for malformed input."""
    if not is_sparse_encoded(data) or data[FORMAT_KEY] != VERSION:
        raise ValueError(f'not a version-{VERSION} sparse tensor encoding (expected a dict with {FORMAT_KEY!r}: {VERSION})')
    try:
        shape, dtype, codec, nnz = [int(s) for s in data['shape']], FLOAT_DTYPES[data['dtype']], data['codec'], data['nnz']
        if codec not in CODECS:
            raise KeyError(codec)
        n = int(np.prod(shape, dtype=np.int64))
        if not 0 <= nnz <= n:
            raise ValueError(f'{nnz} non-zeros for {n} entries')
        size = torch.empty(0, dtype=dtype).element_size()
        keep = _unpack(data['mask'], codec, n)
        if int(keep.sum()) != nnz:
            raise ValueError(f'mask has {int(keep.sum())} entries set, expected {nnz}')
        planes = np.frombuffer(_read(data['values'], codec, nnz * size), np.uint8)
        values = planes.reshape(size, nnz).T.copy().view(f'<i{size}').reshape(-1).astype(f'=i{size}', copy=False)
        neg_zeros = _unpack(data['neg_zeros'], codec, n - nnz) if data['neg_zeros'].numel() else None
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, zlib.error, lzma.LZMAError) as e:
        raise ValueError(f'corrupt sparse tensor encoding: {type(e).__name__}: {e}') from None
    bits = np.zeros(n, values.dtype)
    bits[keep] = values
    if neg_zeros is not None:
        bits[~keep] = neg_zeros * np.iinfo(bits.dtype).min  # the sign bit alone is -0.0
    return torch.from_numpy(bits).view(dtype).view(shape)


def encoded_nbytes(data: dict[str, Any]) -> int:
    """Payload bytes of an encoding (mask + values + zero signs), without the few bytes of metadata."""
    return sum(data[k].numel() for k in ('mask', 'values', 'neg_zeros'))


def compact_state_dict(state: dict[str, Any], codec: str = 'zlib') -> dict[str, Any]:
    """Copy of `state` with every floating tensor that encoding shrinks replaced by its `encode_sparse` dict."""
    out = {}
    for k, v in state.items():
        if isinstance(v, Tensor) and str(v.dtype).removeprefix('torch.') in FLOAT_DTYPES and v.numel():
            enc = encode_sparse(v, codec)
            out[k] = enc if encoded_nbytes(enc) < v.numel() * v.element_size() else v
        else:
            out[k] = v
    return out


def expand_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `compact_state_dict`: decode every encoded entry, pass everything else through."""
    return {k: decode_sparse(v) if is_sparse_encoded(v) else v for k, v in state.items()}
