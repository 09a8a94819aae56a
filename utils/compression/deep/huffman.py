"""Canonical Huffman coding of integer symbol streams, in numpy: code lengths, encoder, block-parallel decoder.

Used by the entropy-coded checkpoint form (utils/compression/deep/codec.py) for the gaps between non-zero weights and
the centroid indices, as in Han et al.'s Deep Compression. A code is *canonical* (Deflate's rule): it is fully
given by each symbol's code length, codes of one length are consecutive integers in symbol order, so a file only
stores the lengths. Lengths are capped at MAX_LEN = 32 bits (when plain Huffman would exceed it, the counts are
halved until it does not: a tiny loss that only very skewed streams of millions of symbols ever see).

Decoding is sequential by nature (a code's start depends on the previous one), so the encoder cuts every stream
into blocks of BLOCK symbols and records each block's length in bits (32 bits per BLOCK symbols: 0.016 bit per
symbol). The decoder then decodes all blocks of all streams at once, one symbol per block per numpy step: BLOCK
vectorised steps instead of one Python step per symbol. A code length is found from the next 32 bits of the
stream by one `searchsorted` over every table's `limit` values (a canonical code of length l is below
limit[l] = (first code after the length-l codes) << (32 - l); the smallest such l is the length).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

MAX_LEN = 32  # longest code (bits): a 32-bit window always holds a whole code
BLOCK = 2048  # symbols per independently decodable block


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length in bits for each symbol from its count (0 for absent symbols), at most ``max_len``.

    Ties are broken by symbol position (deterministic). A single present symbol gets length 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), np.int64)
    present = np.flatnonzero(counts > 0)
    if len(present) == 1:
        lengths[present] = 1
    if len(present) <= 1:
        return lengths
    weights = counts[present]
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_len:
            lengths[present] = depth
            return lengths
        weights = np.maximum(weights >> 1, 1)  # flatten the distribution until the tree is shallow enough


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of the Huffman tree of ``weights`` (>= 2 leaves); heap entries (weight, node id) break ties."""
    n = len(weights)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, np.int64)
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = np.zeros(2 * n - 1, np.int64)
    for i in range(2 * n - 3, -1, -1):  # parents are created after their children: walk from the root down
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code (int64, right-aligned in ``lengths[i]`` bits) of each symbol; 0 where the length is 0."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(len(lengths), np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))  # by length, then symbol
    order = order[lengths[order] > 0]
    code, prev = 0, 0
    for i in order:
        code <<= int(lengths[i]) - prev
        prev = int(lengths[i])
        codes[i] = code
        code += 1
    return codes


@dataclass
class Table:
    """A canonical code: the stream's distinct values (ascending) and the code length of each, in bits."""

    values: np.ndarray  # int64, ascending
    lengths: np.ndarray  # int64, 1..MAX_LEN


def make_table(symbols: np.ndarray) -> Table:
    """The optimal (length-capped) canonical Huffman table for an integer stream."""
    values, counts = np.unique(np.asarray(symbols, np.int64), return_counts=True)
    return Table(values, code_lengths(counts))


def encode(symbols: np.ndarray, table: Table) -> tuple[np.ndarray, np.ndarray]:
    """Code ``symbols`` (each must be in table.values) -> (bits as a bool array, bits per block of BLOCK symbols)."""
    symbols = np.asarray(symbols, np.int64)
    rank = np.searchsorted(table.values, symbols)
    codes, lengths = canonical_codes(table.lengths)[rank], table.lengths[rank]
    per_symbol_bits = np.arange(MAX_LEN)
    chunks = []
    for s in range(0, len(symbols), 1 << 18):  # bounded memory: 2^18 symbols x 32 bits at a time
        c, n = codes[s:s + (1 << 18), None], lengths[s:s + (1 << 18), None]
        bits = ((c >> np.maximum(n - 1 - per_symbol_bits, 0)) & 1).astype(bool)  # MSB first
        chunks.append(bits[per_symbol_bits < n])
    starts = np.arange(0, len(symbols), BLOCK)
    block_bits = np.add.reduceat(lengths, starts) if len(symbols) else np.zeros(0, np.int64)
    return (np.concatenate(chunks) if chunks else np.zeros(0, bool)), block_bits


def _limits(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code length l = 1..32: limit[l] (see module docstring), first code, and rank of that first code."""
    counts = np.bincount(lengths, minlength=MAX_LEN + 1)[1:MAX_LEN + 1].astype(np.int64)
    first = np.zeros(MAX_LEN, np.int64)
    code = 0
    for i in range(1, MAX_LEN):
        code = (code + counts[i - 1]) << 1
        first[i] = code
    ranks = np.concatenate([[0], np.cumsum(counts)[:-1]])
    limit = (first + counts) << (MAX_LEN - np.arange(1, MAX_LEN + 1))
    return limit, first, ranks


def check_table(table: Table) -> None:
    """Raise ValueError unless ``table`` is a usable prefix code (lengths 1..32, Kraft sum <= 1, sorted values)."""
    n = table.lengths
    if len(n) == 0 or n.min() < 1 or n.max() > MAX_LEN or np.any(np.diff(table.values) <= 0):
        raise ValueError('bad Huffman table')
    if np.sum(np.ldexp(1.0, -n)) > 1.0 + 1e-12:
        raise ValueError('Huffman code lengths violate the Kraft inequality')


def decode(stream: np.ndarray, tables: list[Table], counts: list[int], block_bits: np.ndarray) -> list[np.ndarray]:
    """Decode the concatenated streams: stream i has counts[i] symbols coded with tables[i].

    ``stream`` is the packed bytes (np.uint8, MSB first); ``block_bits`` the bits of every block of every stream,
    in order (as returned by `encode`). Returns one int64 array of values per stream. Raises ValueError when the
    sizes do not add up (a corrupt stream decodes to wrong values: checksums are the caller's job).
    """
    n_blocks = [-(-c // BLOCK) for c in counts]
    block_bits = np.asarray(block_bits, np.int64)
    if len(block_bits) != sum(n_blocks) or block_bits.min(initial=0) < 0 or block_bits.sum() > 8 * len(stream):
        raise ValueError('Huffman block table does not match the stream')
    out = [np.zeros(c, np.int64) for c in counts]
    if not block_bits.size:
        return out
    limits, firsts, ranks, values, base = [], [], [], [], 0
    table_of_block, first_symbol, block_len, table_base = [], [], [], []
    for t, (table, c, nb) in enumerate(zip(tables, counts, n_blocks)):
        if c:
            check_table(table)
        order = np.lexsort((np.arange(len(table.lengths)), table.lengths))
        limit, first, rank = _limits(table.lengths)
        limits.append(limit + (t << (MAX_LEN + 1)))  # one sorted array for all tables: table t's keys in [t*2^33, ...)
        firsts.append(first)
        ranks.append(rank + base)
        values.append(table.values[order])
        table_base.append(base)
        base += len(order)
        table_of_block += [t] * nb
        first_symbol += list(range(0, c, BLOCK))
        block_len += [min(BLOCK, c - s) for s in range(0, c, BLOCK)]
    limits, firsts, ranks, values = (np.concatenate(x) for x in (limits, firsts, ranks, values))
    tb = np.asarray(table_of_block, np.int64)
    pos = np.concatenate([[0], np.cumsum(block_bits)[:-1]])  # bit position of each block
    end = pos + block_bits
    blen = np.asarray(block_len, np.int64)
    # 64-bit big-endian word starting at every byte: a 32-bit window at any bit offset lies inside one
    padded = np.concatenate([stream.astype(np.uint64), np.zeros(8, np.uint64)])
    words = np.zeros(len(stream) + 1, np.uint64)
    for j in range(8):
        words |= padded[j:j + len(words)] << np.uint64(56 - 8 * j)
    decoded = np.zeros((len(tb), BLOCK), np.int64)
    key_base = tb << (MAX_LEN + 1)
    for j in range(int(blen.max())):
        byte = np.minimum(pos >> 3, len(words) - 1)
        window = ((words[byte] << (pos & 7).astype(np.uint64)) >> np.uint64(32)).astype(np.int64)
        slot = np.searchsorted(limits, key_base + window, side='right')
        length = slot - tb * MAX_LEN + 1  # 1-based code length
        bad = length > MAX_LEN
        length = np.minimum(length, MAX_LEN)
        li = tb * MAX_LEN + length - 1
        rank = ranks[li] + (window >> (MAX_LEN - length)) - firsts[li]
        decoded[:, j] = values[np.clip(rank, 0, len(values) - 1)]
        active = j < blen
        if np.any(bad & active):
            raise ValueError('invalid Huffman code in the stream')
        pos = pos + np.where(active, length, 0)
    if np.any(pos != end):
        raise ValueError('Huffman blocks do not end where the block table says')
    start = 0
    for t, c in enumerate(counts):
        nb = n_blocks[t]
        out[t] = decoded[start:start + nb].reshape(-1)[:c].copy() if nb else out[t]
        start += nb
    return out
