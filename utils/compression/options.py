"""train.py's compression flags: their argument groups, defaults taken from the method configs, and the checks of
their combinations (one-line TrainingErrors). Flag names are part of the CLI contract: never rename one.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import fields

from utils.cli import float_in, int_at_least, round_multiple
from utils.compression.channel.dns import DNS_IMPORTANCES
from utils.compression.channel.pruning import DEFAULT_IMPORTANCE
from utils.compression.deep.sharing import BITS, EDGE_BITS, STEPS
from utils.compression.layers import GRANULARITIES, SCOPES
from utils.compression.surgery import DNSConfig
from utils.train_utils import TrainingError

_CONFIG = {f.name: f.default for f in fields(DNSConfig)}
DNS_SCHEDULES = ('constant', 'cubic')
# what an unset --dns-* flag becomes with --dns: the DNSConfig defaults, the original DNS schedule, single weights
DNS_DEFAULTS = {'dns_scope': _CONFIG['scope'], 'dns_gamma': _CONFIG['gamma'], 'dns_power': _CONFIG['power'],
                'dns_band': _CONFIG['band'], 'dns_schedule': DNS_SCHEDULES[0], 'dns_granularity': GRANULARITIES[0]}


def share_bits(s: str) -> int:
    """argparse type for --share-bits: bits per centroid index, 2..8."""
    v = int_at_least(BITS[0])(s)
    if v not in BITS:
        raise argparse.ArgumentTypeError(f'must be an integer from {BITS[0]} to {BITS[-1]} (4 to 256 shared values '
                                         f'per layer), got {s}')
    return v


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """The sparsity/DNS, channel and weight-sharing argument groups of train.py (defaults: see DNS_DEFAULTS)."""
    d = DNS_DEFAULTS
    g = parser.add_argument_group('sparsity: Dynamic Network Surgery (utils/compression/weight, '
                                  'docs/weight-pruning.md)')
    add = g.add_argument
    add('--dns', action='store_true', help='learn sparse weights with Dynamic Network Surgery')
    add('--target-sparsity', type=float_in(0, 1, lo_open=True, hi_open=True), default=None,
        help='DNS: final fraction of zero weights (of prunable channels with --dns-granularity channel), 0 < S < 1')
    add('--dns-scope', choices=SCOPES, default=None,
        help=f"DNS: sparsity per layer or overall (default {d['dns_scope']})")
    add('--dns-gamma', type=float_in(0, math.inf, hi_open=True), default=None,
        help=f"DNS: mask update probability (1 + gamma*k)^-power at step k (default gamma {d['dns_gamma']:g})")
    add('--dns-power', type=float_in(0, math.inf, lo_open=True, hi_open=True), default=None,
        help=f"DNS: see --dns-gamma (default {d['dns_power']:g})")
    add('--dns-band', type=float_in(0, 1, hi_open=True), default=None,
        help=f"DNS: hysteresis half-width delta relative to the threshold (default {d['dns_band']:g})")
    add('--dns-schedule', choices=DNS_SCHEDULES, default=None,
        help='DNS: target of the mask updates during surgery: constant S from the first step (default; the '
             'original DNS: one-shot magnitude masks, then pruning and splicing at S) or a cubic ramp from the '
             'current sparsity to S (Zhu & Gupta)')
    add('--dns-surgery-epochs', type=int_at_least(0), default=None,
        help='DNS: epochs during which masks may change, then frozen (default half of --epochs, at least 1; '
             '0 = one-shot prune at the start, then fine-tune with fixed masks)')
    add('--dns-granularity', choices=GRANULARITIES, default=None,
        help='DNS: mask single weights (default) or whole output channels (channel DNS: best.pt/last.pt are '
             'physically smaller, faster models)')
    add('--prune-exclude-first', action='store_true', help='DNS: keep the first conv dense')
    add('--prune-exclude-detect', action='store_true', help='DNS: keep the Detect output convs dense')

    g = parser.add_argument_group('channel methods (utils/compression/channel, docs/channel-pruning.md)')
    add = g.add_argument
    add('--prune-importance', choices=DNS_IMPORTANCES, default=None,
        help=f'channel DNS: rank channels by filters + BN + readers, normalised (group), by |BatchNorm gamma| (bn), '
             f'by the mean |w| of their filters (l1) or by the running mean of the squared first-order loss change '
             f'of switching them off/on (taylor, from the straight-through gradients); default {DEFAULT_IMPORTANCE}')
    add('--prune-round', type=round_multiple, default=None, metavar='N',
        help="channel DNS: kept channels per group rounded up to a multiple of N (default 1); auto = the device's "
             'kernel width (16 on AVX-512 CPUs, 8 on other CPUs and on CUDA)')
    add('--slim', type=float_in(0, math.inf, hi_open=True), default=0.0, metavar='LAMBDA',
        help='network slimming (Liu et al. 2017): L1 penalty LAMBDA * sum|gamma| on the BatchNorm scales of the '
             'prunable channels, so that ranking channels by |gamma| afterwards removes the unimportant ones')

    g = parser.add_argument_group('weight sharing (utils/compression/deep, docs/deep-compression.md)')
    add = g.add_argument
    add('--share-bits', type=share_bits, default=None,
        help='share 2^B values per Conv layer (k-means on the non-zero weights of --weights, zeros kept) and '
             'fine-tune the centroids; 2 <= B <= 8')
    add('--share-edge-bits', type=share_bits, default=None, metavar='B',
        help=f'--share-bits: bits of the first conv and the Detect output convs (< 1.5 %% of the weights, the most '
             f'sensitive to sharing; default {EDGE_BITS}; = --share-bits for one width everywhere)')
    add('--share-step', choices=STEPS, default=STEPS[0],
        help="--share-bits: a centroid's LR is LR/members ('mean': its members' average step) or LR ('sum', "
             "the summed gradient as is)")


def check_dns_opt(opt: argparse.Namespace) -> None:
    """Validate the DNS flag combination and fill in defaults (raises TrainingError with one line)."""
    flags = {'--target-sparsity': opt.target_sparsity, '--dns-scope': opt.dns_scope, '--dns-gamma': opt.dns_gamma,
             '--dns-power': opt.dns_power, '--dns-band': opt.dns_band, '--dns-surgery-epochs': opt.dns_surgery_epochs,
             '--dns-schedule': opt.dns_schedule, '--dns-granularity': opt.dns_granularity,
             '--prune-importance': opt.prune_importance, '--prune-round': opt.prune_round,
             '--prune-exclude-first': opt.prune_exclude_first or None,
             '--prune-exclude-detect': opt.prune_exclude_detect or None}
    if not opt.dns:
        given = [k for k, v in flags.items() if v is not None]
        if given:
            raise TrainingError(f'{given[0]} needs --dns (Dynamic Network Surgery)')
        return
    if opt.target_sparsity is None:
        raise TrainingError('--dns needs --target-sparsity S with 0 < S < 1, e.g. --target-sparsity 0.5')
    for k, v in DNS_DEFAULTS.items():
        if getattr(opt, k) is None:
            setattr(opt, k, v)
    if opt.dns_granularity == 'weight' and (opt.prune_importance or opt.prune_round):
        raise TrainingError(f"--prune-{'importance' if opt.prune_importance else 'round'} needs "
                            f"--dns-granularity channel")
    if opt.dns_granularity == 'channel':
        opt.prune_importance = opt.prune_importance or DEFAULT_IMPORTANCE
        opt.prune_round = opt.prune_round or 1
    if opt.dns_surgery_epochs is None:
        opt.dns_surgery_epochs = max(1, opt.epochs // 2)  # first half surgery, second half fixed-mask fine-tuning
    if opt.dns_surgery_epochs > opt.epochs:
        raise TrainingError(f'--dns-surgery-epochs {opt.dns_surgery_epochs} exceeds --epochs {opt.epochs}')


def check_share_opt(opt: argparse.Namespace) -> None:
    """--share-bits fine-tunes the centroids of trained (usually pruned) weights with fixed masks: it needs
    --weights, and it comes after DNS rather than with it (DNS changes the masks the codebooks are built on)."""
    if opt.share_bits is None:
        if getattr(opt, 'share_edge_bits', None) is not None:
            raise TrainingError('--share-edge-bits needs --share-bits')
        return
    if opt.dns:
        raise TrainingError('--share-bits and --dns do not combine: train with --dns first, then run '
                            '--share-bits with --weights set to its best.pt (weight sharing keeps the masks fixed)')
    if not opt.weights:
        raise TrainingError('--share-bits needs --weights: the trained (e.g. pruned) model whose weights to share')
