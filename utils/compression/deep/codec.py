"""The entropy-coded checkpoint form `.deep.pt` (Deep Compression, stage three) and its size report.

Han, Mao, Dally, "Deep Compression" (arXiv 1510.00149): after pruning and weight sharing, a layer is its sparse
pattern, one codebook index per non-zero weight and a small codebook; the positions (as gaps between non-zeros)
and the indices are Huffman-coded. Here, per Conv2d/Linear weight (utils.compression.layers.prunable_layers):

    codebook  the distinct non-zero values of the weight, raw, in its dtype (2^b of them after weight sharing;
              any weight works, an unshared one just has a large codebook). The zero is the bit pattern +0.0 only,
              so -0.0 and NaN round-trip as codebook values.
    gaps      zeros before each non-zero weight (flat order), canonical Huffman code (utils/compression/deep/huffman.py)
    indices   codebook index of each non-zero weight, canonical Huffman code

Everything else (BN, biases, Detect anchors, the module structure, names, opt, ...) is the release-style checkpoint
as in the compact form (utils/checkpoint.py): the pickled model with each coded weight left as an empty tensor of
its dtype. That checkpoint, the per-layer metadata, codebooks and Huffman tables are one torch.save'd dict,
LZMA-compressed (the pickled structure is ~190 kB raw for yolov5n, ~10x that of its tensors' metadata alone).

File layout (a torch.save'd dict, read by utils.checkpoint.load with the same allow-list as any checkpoint):

    {'deep_compression': {'version': 1, 'size': bytes of the inner dict, 'sha256': hex digest of payload + stream,
                          'payload': uint8 LZMA(torch.save(inner)), 'stream': uint8 Huffman bit stream}}
    inner = {'ckpt': release checkpoint (coded weights empty), 'layers': [per-layer dict], 'block_bits': int64}

Loading checks the SHA-256 before decoding anything, so a flipped or missing byte anywhere in the payload or
stream is a one-line CheckpointError, never a different model; decoding is bit-exact.

Writing files and the size report: deep_file.py (`python export.py --weights best.pt --include deep`).
This module only turns a checkpoint dict into the coded dict and back, so that utils/checkpoint.py can read
`.deep.pt` files without importing anything that imports it.
"""
from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
from torch import Tensor

from utils.compression.deep import huffman
from utils.compression.deep.sparse_format import FLOAT_DTYPES, INT_VIEW, _compress, _decompress, _payload
from utils.compression.layers import prunable_layers

DEEP_KEY = 'deep_compression'
VERSION = 1
SUFFIX = '.deep.pt'
def is_deep(ckpt: Any) -> bool:
    """True for a dict loaded from a `.deep.pt` file (before expansion)."""
    return isinstance(ckpt, dict) and DEEP_KEY in ckpt


# ----------------------------------------------------------------------------------------------- encode
def _encode_weight(weight: Tensor) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """One layer -> (metadata with codebook and tables, [gap bits, index bits], [gap block bits, index block bits])."""
    name = str(weight.dtype).removeprefix('torch.')
    if name not in FLOAT_DTYPES:
        raise ValueError(f'deep compression codes floating weights {tuple(FLOAT_DTYPES)}, got {weight.dtype}')
    w = weight.detach().cpu().contiguous().view(-1)
    bits = w.view(INT_VIEW[w.element_size()]).numpy()
    positions = np.flatnonzero(bits != 0)  # +0.0 is the only zero
    codebook, index = np.unique(bits[positions], return_inverse=True)
    gaps = np.diff(positions, prepend=-1) - 1
    gap_table, index_table = huffman.make_table(gaps), huffman.make_table(index)
    gap_bits, gap_blocks = huffman.encode(gaps, gap_table)
    index_bits, index_blocks = huffman.encode(index, index_table)
    meta = {'shape': list(weight.shape), 'dtype': name, 'nnz': int(positions.size),
            'codebook': torch.from_numpy(codebook.copy()).view(weight.dtype),
            'gap_values': torch.from_numpy(gap_table.values.astype(np.int64)),
            'gap_lengths': torch.from_numpy(gap_table.lengths.astype(np.uint8)),
            'index_lengths': torch.from_numpy(index_table.lengths.astype(np.uint8)),  # values: 0..len(codebook)-1
            'gap_bits': int(gap_bits.size), 'index_bits': int(index_bits.size)}
    return meta, [gap_bits, index_bits], [gap_blocks, index_blocks]


def encode_checkpoint(release: dict[str, Any]) -> dict[str, Any]:
    """The `.deep.pt` dict (see module docstring) of a release checkpoint (utils.checkpoint.release_checkpoint),
    Conv2d/Linear weights coded. The release's model is consumed: its coded weights are left empty."""
    layers, streams, blocks = [], [], []
    for name, module in prunable_layers(release['model']):
        meta, bits, block_bits = _encode_weight(module.weight)
        layers.append({'name': f'{name}.weight', **meta})
        streams += bits
        blocks += block_bits
        module.weight.data = torch.empty(0, dtype=module.weight.dtype)
    inner = {'ckpt': release, 'layers': layers,
             'block_bits': torch.from_numpy(np.concatenate(blocks).astype(np.int64)) if blocks else torch.zeros(0)}
    buffer = io.BytesIO()
    torch.save(inner, buffer)
    raw = buffer.getvalue()
    payload = _compress(raw, 'lzma')
    stream = np.packbits(np.concatenate(streams)).tobytes() if streams else b''
    return {DEEP_KEY: {'version': VERSION, 'size': len(raw), 'sha256': hashlib.sha256(payload + stream).hexdigest(),
                       'payload': _payload(payload), 'stream': _payload(stream)}}


# ----------------------------------------------------------------------------------------------- decode
def _tensor_bytes(t: Any, what: str) -> bytes:
    if not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError(f'{what} must be a 1-D uint8 tensor')
    return t.numpy().tobytes()


def read_inner(deep: dict[str, Any], load_bytes) -> tuple[dict[str, Any], np.ndarray]:
    """Check version and SHA-256 of a `.deep.pt` dict, decompress and unpickle (``load_bytes``: the safe loader
    for an in-memory checkpoint) its inner dict. Returns (inner dict, Huffman stream bytes). ValueError if bad."""
    if not isinstance(deep, dict) or deep.get('version') != VERSION:
        raise ValueError(f"unsupported deep-compression version {deep.get('version') if isinstance(deep, dict) else deep!r}"
                         f' (this code reads version {VERSION})')
    payload, stream = _tensor_bytes(deep.get('payload'), 'payload'), _tensor_bytes(deep.get('stream'), 'stream')
    if hashlib.sha256(payload + stream).hexdigest() != deep.get('sha256'):
        raise ValueError('checksum mismatch (SHA-256): the file is corrupt or truncated')
    inner = load_bytes(_decompress(payload, 'lzma', int(deep['size'])))
    if not isinstance(inner, dict) or not {'ckpt', 'layers', 'block_bits'} <= set(inner):
        raise ValueError('payload is not a deep-compression dict')
    return inner, np.frombuffer(stream, np.uint8)


def decode_layers(inner: dict[str, Any], stream: np.ndarray) -> dict[str, Tensor]:
    """The coded weights of an inner dict, bit-exact, by parameter name."""
    layers = inner['layers']
    tables, counts = [], []
    for layer in layers:
        nnz = int(layer['nnz'])
        tables.append(huffman.Table(layer['gap_values'].numpy().astype(np.int64),
                                    layer['gap_lengths'].numpy().astype(np.int64)))
        tables.append(huffman.Table(np.arange(len(layer['index_lengths']), dtype=np.int64),
                                    layer['index_lengths'].numpy().astype(np.int64)))
        counts += [nnz, nnz]
    symbols = huffman.decode(stream, tables, counts, inner['block_bits'].numpy())
    out = {}
    for i, layer in enumerate(layers):
        gaps, index = symbols[2 * i], symbols[2 * i + 1]
        dtype = FLOAT_DTYPES[layer['dtype']]
        shape = [int(s) for s in layer['shape']]
        n = int(np.prod(shape, dtype=np.int64))
        codebook = layer['codebook']
        if codebook.dtype != dtype or (gaps.size and gaps.min() < 0) or (index.size and index.max() >= len(codebook)):
            raise ValueError(f"layer {layer['name']}: codes out of range")
        positions = np.cumsum(gaps + 1) - 1
        if positions.size and positions[-1] >= n:
            raise ValueError(f"layer {layer['name']}: positions beyond its {n} entries")
        view = INT_VIEW[codebook.element_size()]  # the codebook's bit patterns as integers of the same size
        bits = np.zeros(n, codebook.view(view).numpy().dtype)
        bits[positions] = codebook.view(view).numpy()[index]
        out[str(layer['name'])] = torch.from_numpy(bits).view(dtype).view(shape)
    return out


def expand(deep: dict[str, Any], load_bytes) -> dict[str, Any]:
    """Inverse of `encode_checkpoint`: the release checkpoint with every coded weight decoded back in place."""
    return _fill(*read_inner(deep, load_bytes))


def _fill(inner: dict[str, Any], stream: np.ndarray) -> dict[str, Any]:
    """The inner dict's checkpoint with its coded weights decoded into the model."""
    ckpt = inner['ckpt']
    params = dict(ckpt['model'].named_parameters())
    for name, weight in decode_layers(inner, stream).items():
        if name not in params:
            raise ValueError(f'coded weight {name} is not a parameter of the model')
        params[name].data = weight
    return ckpt
