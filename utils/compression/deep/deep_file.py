"""`.deep.pt` files: write one from a checkpoint (optionally sharing its weights first) and report its sizes.

The format itself (encode/decode of the coded dict) is codec.py; this module adds the file and the report, and so
may use the checkpoint loader. Usage: `python export.py --weights best.pt --include deep` or
`python -m utils.compression.deep.deep_file --weights best.pt [--bits 4]`.
"""
from __future__ import annotations

import argparse
import io
import sys
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.checkpoint import CheckpointError, load, load_bytes, release_checkpoint, save
from utils.compression.deep.codec import DEEP_KEY, SUFFIX, _fill, encode_checkpoint, is_deep, read_inner
from utils.compression.deep.sharing import EDGE_BITS, share_weights
from utils.general import LOGGER, colorstr, set_logging


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


def export_deep(weights: str | Path, out: str | Path | None = None, bits: int | None = None,
                edge_bits: int | None = EDGE_BITS) -> Path:
    """Write the entropy-coded `.deep.pt` of checkpoint ``weights`` (default name: W with suffix .deep.pt).

    The weights are coded losslessly as they are (shared weights from train.py --share-bits have <= 2^B values
    per layer). ``bits`` first applies one-shot weight sharing with 2^bits centroids (k-means, no fine-tuning);
    ``edge_bits``: the first conv's and the Detect output convs' bits (None: ``bits``).
    Logs the size report; returns the written path.
    """
    weights = Path(weights)
    out = Path(out) if out else deep_path(weights)
    ckpt = release_checkpoint(load(weights))
    if bits is not None:
        model = ckpt['model']
        dtype = next(model.parameters()).dtype
        ckpt['model'] = model.float()
        share_weights(ckpt['model'], bits, edge_bits=edge_bits)
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
    parser.add_argument('--edge-bits', type=int, choices=range(2, 9), default=None,
                        help=f'--bits: bits of the first conv and the Detect output convs (default {EDGE_BITS})')
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> list[Path]:
    set_logging()
    try:
        if opt.edge_bits is not None and opt.bits is None:
            raise ValueError('--edge-bits needs --bits')
        return [export_deep(w, bits=opt.bits, edge_bits=opt.edge_bits or EDGE_BITS) for w in opt.weights]
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
    main(parse_opt(sys.argv[1:]))
