"""Tests for utils/compression/deep/huffman.py: golden code lengths and canonical codes, round trips, the length cap, bad tables."""
from __future__ import annotations

import numpy as np
import pytest

from utils.compression.deep import huffman


def test_code_lengths_and_canonical_codes_golden():
    # the textbook example (CLRS 16.3): a..f with counts 5, 9, 12, 13, 16, 45 -> lengths 4 4 3 3 3 1
    lengths = huffman.code_lengths([5, 9, 12, 13, 16, 45])
    assert lengths.tolist() == [4, 4, 3, 3, 3, 1]
    # canonical: f=0, then the 3-bit codes c=100 d=101 e=110 in symbol order, then a=1110 b=1111
    assert huffman.canonical_codes(lengths).tolist() == [0b1110, 0b1111, 0b100, 0b101, 0b110, 0b0]
    assert huffman.code_lengths([0, 7, 0]).tolist() == [0, 1, 0]  # one symbol: a 1-bit code
    assert huffman.code_lengths([3, 3, 3, 3]).tolist() == [2, 2, 2, 2]


def test_length_cap_keeps_a_prefix_code():
    counts = np.array([2 ** i for i in range(40)])  # plain Huffman would need 39-bit codes
    lengths = huffman.code_lengths(counts, max_len=12)
    assert lengths.max() <= 12 and np.sum(np.ldexp(1.0, -lengths)) <= 1.0


def round_trip(streams):
    tables = [huffman.make_table(s) if len(s) else huffman.Table(np.zeros(0, np.int64), np.zeros(0, np.int64))
              for s in streams]
    coded = [huffman.encode(s, t) for s, t in zip(streams, tables)]
    stream = np.packbits(np.concatenate([b for b, _ in coded]))
    blocks = np.concatenate([k for _, k in coded])
    return huffman.decode(stream, tables, [len(s) for s in streams], blocks), coded, tables


def test_round_trip_and_near_entropy():
    rng = np.random.default_rng(0)
    streams = [rng.geometric(0.3, 5000) - 1, rng.integers(0, 8, 3 * huffman.BLOCK + 5), np.full(10, 7),
               np.zeros(0, np.int64), rng.zipf(1.3, 999) * 1000, np.array([2 ** 40, -5, 0])]
    out, coded, _ = round_trip(streams)
    assert all(np.array_equal(o, s) for o, s in zip(out, streams))
    gaps = streams[0]  # a geometric stream: Huffman within 3 % of its empirical entropy
    p = np.unique(gaps, return_counts=True)[1] / len(gaps)
    assert len(coded[0][0]) <= 1.03 * len(gaps) * float(-(p * np.log2(p)).sum())
    assert len(coded[2][0]) == 10  # one symbol: 1 bit each


def test_bad_tables_and_block_tables_are_errors():
    with pytest.raises(ValueError, match='Kraft'):
        huffman.check_table(huffman.Table(np.arange(3), np.array([1, 1, 1])))
    with pytest.raises(ValueError, match='block table'):
        huffman.decode(np.zeros(4, np.uint8), [huffman.make_table(np.arange(4))], [4], np.array([8, 8]))
    single = huffman.make_table(np.zeros(3, np.int64))  # code '0' only: a 1 bit is invalid
    with pytest.raises(ValueError, match='invalid Huffman code'):
        huffman.decode(np.array([0b01000000], np.uint8), [single], [3], np.array([3]))
