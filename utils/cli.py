"""argparse value types shared by the CLIs: a bad value becomes a one-line argparse error (exit 2)."""
from __future__ import annotations

import argparse
import math
from typing import Callable

from utils.compression.channel.pruning import IMPORTANCES
from utils.compression.layers import GRANULARITIES, SCOPES


def int_at_least(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``lo``."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f'must be an integer >= {lo}, got {s}')
        return v
    return parse


def round_multiple(s: str) -> int | str:
    """argparse type for --prune-round: an integer >= 1, or 'auto' (the device's kernel width, resolved later)."""
    if s == 'auto':
        return s
    try:
        return int_at_least(1)(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {s!r}") from None


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in the interval lo..hi (closed ends unless ``*_open``)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a number") from None
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok or not math.isfinite(v):
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f'must be in {interval}, got {s}')
        return v
    return parse


fraction = float_in(0.0, 1.0)  # thresholds: 0 <= x <= 1


def prune_amount(s: str) -> float:
    """argparse type for --prune: the fraction of Conv2d weights to zero, 0 <= AMOUNT < 1."""
    try:
        return float_in(0.0, 1.0, hi_open=True)(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'{s} must be a fraction of weights in [0, 1), e.g. 0.3') from None


def add_prune_args(parser: argparse.ArgumentParser) -> None:
    """The pruning flags shared by val.py and detect.py (applied after loading, before fusing)."""
    parser.add_argument('--prune', type=prune_amount, default=0.0, metavar='AMOUNT',
                        help='prune this fraction before evaluating, 0 <= AMOUNT < 1: of the Conv2d weights '
                             '(smallest |w|, zeroed) or, with --prune-granularity channel, of the prunable output '
                             'channels (removed: a smaller, faster model)')
    parser.add_argument('--prune-scope', default='layer', choices=SCOPES,
                        help='layer: AMOUNT of every layer (channel: of every channel group); global: one ranking '
                             'over all layers')
    parser.add_argument('--prune-granularity', default='weight', choices=GRANULARITIES,
                        help='weight: zero single weights (sparse, same speed); channel: remove whole output '
                             'channels with everything that reads them (faster)')
    parser.add_argument('--prune-importance', default=None, choices=IMPORTANCES,
                        help='channel ranking: group = filters + BN + readers, normalised (default; best after '
                             'fine-tuning), l1 = mean |w| of the filters, bn = |BatchNorm gamma| (network '
                             'slimming, use after train.py --slim)')
    parser.add_argument('--prune-round', type=round_multiple, default=1, metavar='N',
                        help="channel: round kept channels per group up to a multiple of N; auto = the device's "
                             'kernel width (16 on AVX-512 CPUs, 8 on other CPUs and on CUDA): the fastest models')
