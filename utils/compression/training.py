"""The compression methods a train.py command line asks for, as one `TrainingHooks` (see hooks.py).

`make_hooks` is the only place that reads the method flags (--dns*, --prune-*, --slim, --share-*); train.py's
loop only calls the hook points. Errors a user can cause become one-line TrainingErrors.
"""
from __future__ import annotations

import argparse

from torch import nn

from utils.compression.channel.dns import ChannelDNS
from utils.compression.channel.pruning import resolve_round
from utils.compression.channel.slimming import Slimming
from utils.compression.deep.sharing import EDGE_BITS, WeightSharing
from utils.compression.hooks import TrainingHook, TrainingHooks
from utils.compression.weight.dns import DNS
from utils.compression.weight.magnitude import sparsity
from utils.general import LOGGER, colorstr
from utils.train_utils import TrainingError, optimizer_steps


class SparsityReport(TrainingHook):
    """A model that is already sparse (pruned, DNS-trained) and trained without DNS: the 'sparsity' column."""

    def epoch_columns(self, model: nn.Module) -> dict[str, float | int]:
        r = sparsity(model)
        LOGGER.info(f'{colorstr("sparsity: ")}{r}')
        return {'sparsity': float(r)}


def make_hooks(model: nn.Module, opt: argparse.Namespace, nb: int, nw: int, nbs: int, ckpt: dict | None,
               ema=None) -> TrainingHooks:
    """The methods of this run, in hook order: slimming, DNS (or the sparsity report), weight sharing.

    ``nb`` batches per epoch, ``nw`` warmup iterations and ``nbs`` the nominal batch size convert epochs into optimizer
    steps; ``ckpt`` is the checkpoint being resumed (its 'dns'/'share' states), else None; ``ema`` gets the shared
    weights too. A model that is >= 1 % sparse without DNS gets its sparsity reported each epoch.
    """
    dns = make_dns(model, opt, nb, nw, nbs, ckpt.get('dns') if ckpt else None) if opt.dns else None
    slim = make_slimming(model, opt.slim) if opt.slim else None
    share = make_sharing(model, opt, ckpt.get('share') if ckpt else None, ema) if opt.share_bits else None
    report = dns if dns is not None else (SparsityReport() if float(sparsity(model)) >= 0.01 else None)
    hooks = [h for h in (slim, report, share) if h is not None]
    return TrainingHooks(hooks)


def make_dns(model: nn.Module, opt: argparse.Namespace, nb: int, nw: int, nbs: int, state: dict | None = None):
    """The Dynamic Network Surgery object for ``model`` configured from opt's --dns flags (see weight/dns.py).

    The surgery phase lasts --dns-surgery-epochs epochs of ``nb`` batches, converted to optimizer steps with the
    loop's accumulation rule (warmup over ``nw`` iterations, nominal batch ``nbs``). ``state`` (ckpt['dns'])
    restores masks, masked values, step and RNG on --resume. --dns-surgery-epochs 0 means no surgery: the masks are
    cut once from the starting weights (one-shot magnitude pruning) and stay fixed, i.e. prune + fine-tune.
    """
    if state is None and opt.resume:
        raise TrainingError("--resume of a --dns run needs the checkpoint's 'dns' state, which is missing")
    steps = max(optimizer_steps(opt.dns_surgery_epochs * nb, nw, nbs, opt.batch_size), 1)
    channel = (opt.dns_granularity or 'weight') == 'channel'  # None: a run saved before channel DNS existed
    kw = dict(target=opt.target_sparsity, surgery_steps=steps, scope=opt.dns_scope, band=opt.dns_band,
              gamma=opt.dns_gamma, power=opt.dns_power,
              s_init=opt.target_sparsity if opt.dns_schedule == 'constant' else None, seed=opt.seed,
              exclude_first=opt.prune_exclude_first, exclude_detect=opt.prune_exclude_detect)
    try:
        if channel:
            round_to = resolve_round(opt.prune_round, next(model.parameters()).device)
            dns = ChannelDNS(model, importance=opt.prune_importance, round_to=round_to, **kw)
        else:
            dns = DNS(model, **kw)
        dns.surgery_epochs = opt.dns_surgery_epochs
        if state is not None:
            dns.load_state_dict(state)
        elif opt.dns_surgery_epochs == 0:  # no surgery: one-shot magnitude cut now, fixed masks while fine-tuning
            dns.finish()
    except ValueError as e:
        raise TrainingError(f'DNS: {e}') from None
    what = (f'{len(dns.names)} channel groups ({opt.prune_importance} importance)' if channel
            else f'{len(dns.names)} weight tensors')
    LOGGER.info(f"{'Resumed' if state else 'Started'} DNS: target sparsity {opt.target_sparsity:.1%} "
                f'({opt.dns_scope} scope) on {what}, surgery for '
                f'{opt.dns_surgery_epochs} epochs ({steps} optimizer steps)')
    return dns


def make_slimming(model: nn.Module, lam: float) -> Slimming:
    """The network-slimming hook (channel/slimming.py) for --slim LAMBDA."""
    try:
        slim = Slimming(model, lam)
    except ValueError as e:
        raise TrainingError(f'--slim: {e}') from None
    LOGGER.info(f'Network slimming: L1 penalty {lam:g} * sum|gamma| on {len(slim.gammas)} BatchNorm layers '
                f'({slim.gamma_summary()})')
    return slim


def make_sharing(model: nn.Module, opt: argparse.Namespace, state: dict | None = None, ema=None) -> WeightSharing:
    """The weight-sharing object for ``model`` (2^--share-bits centroids per Conv layer, deep/sharing.py).

    A new run clusters the model's current non-zero weights (k-means, linear init); ``state`` (ckpt['share'])
    restores codebooks and indices on --resume. The EMA copy is shared with the same indices.
    """
    if state is None and opt.resume:
        raise TrainingError("--resume of a --share-bits run needs the checkpoint's 'share' state, which is missing")
    try:
        share = WeightSharing(model, bits=opt.share_bits, step=getattr(opt, 'share_step', None) or 'mean',
                              edge_bits=getattr(opt, 'share_edge_bits', None) or EDGE_BITS)
        if state is not None:
            share.load_state_dict(state)
        if ema is not None:
            share.apply_to(ema.ema)
    except ValueError as e:
        raise TrainingError(f'weight sharing: {e}') from None
    nnz = sum(int((i != k).sum()) for i, k in zip(share.index, share.ks))
    edge = '' if share.edge_bits == share.bits else f', {share.edge_bits} bits for the first conv and Detect outputs'
    LOGGER.info(f"{'Resumed' if state else 'Started'} weight sharing: {share.k} centroids per layer "
                f'({opt.share_bits} bits{edge}) on {len(share.names)} weight tensors, {nnz} non-zero weights; '
                f"centroids fine-tuned with the summed gradients of their weights (step '{share.step}'), zeros fixed")
    return share
