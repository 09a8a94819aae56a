"""The entropy-coded checkpoint form `.deep.pt` (Deep Compression, stage three) and its size report.

Han, Mao, Dally, "Deep Compression" (arXiv 1510.00149): after pruning and weight sharing, a layer is its sparse
pattern, one codebook index per non-zero weight and a small codebook; the positions (as gaps between non-zeros)
and the indices are Huffman-coded. Here, per Conv2d/Linear weight (utils.sparsity.prunable_layers):

    codebook  the distinct non-zero values of the weight, raw, in its dtype (2^b of them after weight sharing;
              any weight works, an unshared one just has a large codebook). The zero is the bit pattern +0.0 only,
              so -0.0 and NaN round-trip as codebook values.
    gaps      zeros before each non-zero weight (flat order), canonical Huffman code (utils/huffman.py)
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

Export: `export_deep('best.pt')` writes best.deep.pt and logs the report (`python -m utils.deep_compression
--weights best.pt`; `python export.py --weights best.pt --include deep`).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from utils import huffman
from utils.sparse_format import _compress, _decompress, _payload
from utils.sparsity import prunable_layers

DEEP_KEY = 'deep_compression'
VERSION = 1
SUFFIX = '.deep.pt'
_INT = {2: np.int16, 4: np.int32, 8: np.int64}  # same-size integer view of each float dtype
_TORCH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32, 'float64': torch.float64}


def is_deep(ckpt: Any) -> bool:
    """True for a dict loaded from a `.deep.pt` file (before expansion)."""
    return isinstance(ckpt, dict) and DEEP_KEY in ckpt


def release_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Upstream's finished-checkpoint dict from a (training or release) checkpoint: EMA (else model) as 'model',
    no optimizer or EMA, epoch -1; extra keys such as 'dns' or 'share' training state are dropped."""
    from utils.torch_utils import de_parallel

    model = ckpt.get('ema') if isinstance(ckpt.get('ema'), nn.Module) else ckpt.get('model')
    if not isinstance(model, nn.Module):
        raise ValueError("checkpoint holds no model under 'model' or 'ema'")
    keep = ('epoch', 'best_fitness', 'model', 'ema', 'updates', 'optimizer', 'opt', 'git', 'date')
    out = {k: ckpt.get(k) for k in keep}
    out.update(epoch=-1, best_fitness=None, model=deepcopy(de_parallel(model)), ema=None, updates=None,
               optimizer=None)
    for p in out['model'].parameters():
        p.requires_grad = False
    return out


# ----------------------------------------------------------------------------------------------- encode
def _encode_weight(weight: Tensor) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """One layer -> (metadata with codebook and tables, [gap bits, index bits], [gap block bits, index block bits])."""
    name = str(weight.dtype).removeprefix('torch.')
    if name not in _DTYPES:
        raise ValueError(f'deep compression codes floating weights {tuple(_DTYPES)}, got {weight.dtype}')
    w = weight.detach().cpu().contiguous().view(-1)
    bits = w.view(_TORCH_INT[w.element_size()]).numpy()
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


def encode_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The `.deep.pt` dict (see module docstring) of a checkpoint: release form, Conv2d/Linear weights coded."""
    release = release_checkpoint(ckpt)
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
        dtype = _DTYPES[layer['dtype']]
        shape = [int(s) for s in layer['shape']]
        n = int(np.prod(shape, dtype=np.int64))
        codebook = layer['codebook']
        if codebook.dtype != dtype or (gaps.size and gaps.min() < 0) or (index.size and index.max() >= len(codebook)):
            raise ValueError(f"layer {layer['name']}: codes out of range")
        positions = np.cumsum(gaps + 1) - 1
        if positions.size and positions[-1] >= n:
            raise ValueError(f"layer {layer['name']}: positions beyond its {n} entries")
        bits = np.zeros(n, _INT[codebook.element_size()])
        bits[positions] = codebook.view(_TORCH_INT[codebook.element_size()]).numpy()[index]
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


# ----------------------------------------------------------------------------------------------- report
@dataclass
class LayerSize:
    """Sizes of one coded weight: counts of entries, bits of its streams and codebook (1 byte = 8 bits)."""

    name: str
    numel: int
    nnz: int
    codebook: int  # entries
    dtype_bits: int  # bits per codebook value (16 for FP16 checkpoints)
    index_bits: int  # Huffman bits of all indices
    gap_bits: int  # Huffman bits of all positions (gaps)

    @property
    def coded_bits(self) -> int:
        """Indices + positions + raw codebook bits (in the file the codebooks and tables are LZMA-compressed)."""
        return self.index_bits + self.gap_bits + self.codebook * self.dtype_bits


@dataclass
class DeepReport:
    """Per-layer sizes and file sizes in bytes: the coded file, and the model saved dense in FP32 and in FP16."""

    layers: list[LayerSize]
    file_bytes: int
    fp32_bytes: int
    fp16_bytes: int

    def table(self) -> str:
        """A Deep Compression-style table: per layer and total; ratios are dense bits / coded bits."""
        head = (f"{'layer':<32}{'weights':>10}{'kept':>8}{'K':>6}{'bits/idx':>9}{'bits/pos':>9}"
                f"{'x FP32':>8}{'x FP16':>8}")
        rows = [head]
        for s in self.layers:
            per = max(s.nnz, 1)
            rows.append(f'{s.name:<32}{s.numel:>10}{s.nnz / max(s.numel, 1):>8.1%}{s.codebook:>6}'
                        f'{s.index_bits / per:>9.2f}{s.gap_bits / per:>9.2f}'
                        f'{32 * s.numel / max(s.coded_bits, 1):>8.1f}{16 * s.numel / max(s.coded_bits, 1):>8.1f}')
        numel, nnz = sum(s.numel for s in self.layers), sum(s.nnz for s in self.layers)
        idx, gap = sum(s.index_bits for s in self.layers), sum(s.gap_bits for s in self.layers)
        coded = sum(s.coded_bits for s in self.layers)
        per = max(nnz, 1)
        rows.append(f"{'coded weights':<32}{numel:>10}{nnz / max(numel, 1):>8.1%}{'':>6}{idx / per:>9.2f}"
                    f'{gap / per:>9.2f}{32 * numel / max(coded, 1):>8.1f}{16 * numel / max(coded, 1):>8.1f}')
        rows.append(f'file: {self.file_bytes / 1e6:.4f} MB = {(idx + gap) / 8e6:.4f} MB Huffman streams + '
                    f'{(self.file_bytes - (idx + gap) / 8) / 1e6:.4f} MB LZMA payload (codebooks, tables, structure, '
                    f'BN, biases); '
                    f'dense FP32 .pt {self.fp32_bytes / 1e6:.3f} MB ({self.ratio_fp32:.1f}x), '
                    f'dense FP16 .pt {self.fp16_bytes / 1e6:.3f} MB ({self.ratio_fp16:.1f}x)')
        return '\n'.join(rows)

    @property
    def ratio_fp32(self) -> float:
        """Dense FP32 .pt bytes / coded file bytes."""
        return self.fp32_bytes / self.file_bytes

    @property
    def ratio_fp16(self) -> float:
        """Dense FP16 .pt (upstream's saved form) bytes / coded file bytes."""
        return self.fp16_bytes / self.file_bytes


def dense_sizes(ckpt: dict[str, Any]) -> tuple[int, int]:
    """Bytes of the release checkpoint of ``ckpt`` saved the normal way (torch.save), model in FP32 and in FP16."""
    release = release_checkpoint(ckpt)
    sizes = []
    for dtype in (torch.float32, torch.float16):
        buffer = io.BytesIO()
        torch.save({**release, 'model': deepcopy(release['model']).to(dtype)}, buffer)
        sizes.append(len(buffer.getvalue()))
    return sizes[0], sizes[1]


def deep_report(file: str | Path) -> DeepReport:
    """The size report of a `.deep.pt` file (reads it through the safe loader)."""
    from utils.checkpoint import load, load_bytes

    file = Path(file)
    raw = load(file, expand=False)
    if not is_deep(raw):
        raise ValueError(f'{file} is not a {SUFFIX} file')
    inner, stream = read_inner(raw[DEEP_KEY], load_bytes)
    layers = [LayerSize(str(x['name']), int(np.prod(x['shape'], dtype=np.int64)), int(x['nnz']), len(x['codebook']),
                        8 * x['codebook'].element_size(), int(x['index_bits']), int(x['gap_bits']))
              for x in inner['layers']]
    fp32, fp16 = dense_sizes(_fill(inner, stream))
    return DeepReport(layers, file.stat().st_size, fp32, fp16)


# ----------------------------------------------------------------------------------------------- export
def deep_path(weights: str | Path) -> Path:
    """best.pt -> best.deep.pt"""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix('.pt') + SUFFIX)


def export_deep(weights: str | Path, out: str | Path | None = None, bits: int | None = None) -> Path:
    """Write the entropy-coded `.deep.pt` of checkpoint ``weights`` (default name: W with suffix .deep.pt).

    The weights are coded losslessly as they are (shared weights from train.py --share-bits have <= 2^B values
    per layer). ``bits`` first applies one-shot weight sharing with 2^bits centroids (k-means, no fine-tuning).
    Logs the size report; returns the written path.
    """
    from utils.checkpoint import load, save
    from utils.general import LOGGER, colorstr
    from utils.weight_sharing import share_weights

    weights = Path(weights)
    out = Path(out) if out else deep_path(weights)
    ckpt = release_checkpoint(load(weights))
    if bits is not None:
        model = ckpt['model']
        dtype = next(model.parameters()).dtype
        ckpt['model'] = model.float()
        share_weights(ckpt['model'], bits)
        ckpt['model'] = ckpt['model'].to(dtype)
    save(encode_checkpoint(ckpt), out)
    LOGGER.info(f"{colorstr('deep compression:')} {weights} -> {out}\n{deep_report(out).table()}")
    return out


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write the entropy-coded .deep.pt form of a checkpoint and report '
                                                 'its size (Deep Compression)')
    parser.add_argument('--weights', nargs='+', required=True, help='checkpoint path(s), e.g. best.pt')
    parser.add_argument('--bits', type=int, choices=range(2, 9), default=None,
                        help='share weights first (one-shot k-means, 2^bits centroids per layer, no fine-tuning)')
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> list[Path]:
    from utils.checkpoint import CheckpointError
    from utils.general import set_logging

    set_logging()
    try:
        return [export_deep(w, bits=opt.bits) for w in opt.weights]
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
    main(parse_opt(sys.argv[1:]))
