"""argparse value types: good values parse, bad ones raise ArgumentTypeError with a one-line message.

That every flag is documented and no help text is stale: tests/test_docs.py (docs/cli.md is generated)."""
from __future__ import annotations

import argparse

import pytest

from utils.cli import float_in, fraction, int_at_least, prune_amount


def test_prune_amount():
    assert prune_amount('0') == 0.0 and prune_amount('0.3') == 0.3
    for bad in ('1', '1.5', '-0.1', 'nan', 'abc'):
        with pytest.raises(argparse.ArgumentTypeError):
            prune_amount(bad)


def test_ranges():
    assert fraction('1') == 1.0 and int_at_least(1)('3') == 3
    with pytest.raises(argparse.ArgumentTypeError, match='>= 1'):
        int_at_least(1)('0')
    with pytest.raises(argparse.ArgumentTypeError, match='not an integer'):
        int_at_least(0)('1.5')
    open_unit = float_in(0, 1, lo_open=True, hi_open=True)
    assert open_unit('0.5') == 0.5
    for bad in ('0', '1', 'inf'):
        with pytest.raises(argparse.ArgumentTypeError, match=r'\(0, 1\)'):
            open_unit(bad)
