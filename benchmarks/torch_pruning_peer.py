"""Peer comparison: Torch-Pruning (DepGraph) one-shot L1 channel pruning vs ours, same model, FLOPs and fine-tuning.

Usage:
    python benchmarks/torch_pruning_peer.py --weights data/weights/yolov5n-shapes.pt --flops 0.5 --img 256 \
        --out runs/peer/tp50 --finetune-epochs 5 --seeds 0 1 2

Needs the optional `torch-pruning` package (pip install torch-pruning); only this benchmark uses it.

In one run, from the same dense checkpoint:
- ours: `amount_for_flops` + `prune_channels` (L1 filter importance, layer scope), one-shot;
- Torch-Pruning: `MagnitudePruner` with `MagnitudeImportance(p=1)` (its default mean group reduction and
  normalizer, local i.e. per-group ratio), the Detect output convs ignored as in Torch-Pruning's YOLOv5 example,
  its one pruning ratio found by bisection so that our `model_flops` counts the same FLOPs ratio as ours.
Both are saved as ordinary upstream-layout checkpoints (`make_checkpoint` + `save`) and evaluated by val.run
(one-shot), fine-tuned by train.run exactly as compare.py trains its rows (same hyps, epochs, batch, seed,
noval/noplots/noautoanchor; a channel-pruned checkpoint trains its own shape) and evaluated again. CPU latency
(batch 1, fused, torch.inference_mode, repeats interleaved over the three models, median) is measured for the
dense and both pruned models in the same run; the machine is shared, so read the ratios, not the milliseconds.
Printed: a table (params, GFLOPs@640, latency ratio, mAP50-95 one-shot and fine-tuned per seed) and the
per-layer widths where the two pruners differ; written: peer.csv and widths.csv in --out.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import pickle
import statistics
import sys
import time
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from utils.compression.channel.groups import channel_groups  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

TP_HINT = 'Torch-Pruning is not installed: pip install torch-pruning'


def import_torch_pruning():
    """The torch_pruning module, or ImportError with the one-line install hint."""
    try:
        import torch_pruning
    except ImportError:
        raise ImportError(TP_HINT) from None
    return torch_pruning


# ---------------------------------------------------------------------------------------------- Torch-Pruning
def _tp_prune_copy(model: nn.Module, ratio: float, imgsz: int, round_to: int) -> nn.Module:
    """A copy of ``model`` pruned once by Torch-Pruning's MagnitudePruner (L1) at pruning ratio ``ratio``."""
    tp = import_torch_pruning()
    m = deepcopy(model).float().eval()  # eval: Detect returns decoded boxes too; BN uses its running stats
    for p in m.parameters():
        p.requires_grad_(True)  # DepGraph traces the autograd graph: frozen weights leave it empty (nothing pruned)
    if ratio <= 0:
        return m
    p = next(m.parameters())
    ch = m.yaml.get('ch', 3) if hasattr(m, 'yaml') else 3
    example = torch.zeros(1, ch, imgsz, imgsz, device=p.device)
    pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=list(m.model[-1].m),
                                       round_to=round_to if round_to > 1 else None)
    pruner.step()
    return m


def _check_pruned(model: nn.Module, reference: nn.Module, imgsz: int) -> None:
    """The pruned model runs and gives the reference's output shape, and pickles (RuntimeError otherwise)."""
    p = next(model.parameters())
    im = torch.zeros(1, 3, imgsz, imgsz, device=p.device)
    with torch.no_grad():
        y, ref = model(im)[0], deepcopy(reference).float().eval()(im)[0]
    if y.shape != ref.shape:
        raise RuntimeError(f'Torch-Pruning changed the output shape {tuple(ref.shape)} -> {tuple(y.shape)}')
    pickle.dump(model, io.BytesIO())


def prune_with_torch_pruning(model: nn.Module, flops_ratio: float, imgsz: int = 256, round_to: int = 1,
                             tol: float = 0.005) -> nn.Module:
    """A copy of a YOLOv5 DetectionModel channel-pruned by Torch-Pruning to ``flops_ratio`` of its FLOPs at
    ``imgsz`` pixels.

    One-shot MagnitudePruner, L1 magnitude importance (Torch-Pruning's default group reduction), one pruning ratio
    for every group, searched on copies (a square-law guess, kept inside a bisection bracket) until our
    `model_flops` ratio is within ``tol`` (or the closest trial after 20). The Detect output convs keep their
    outputs. ``model`` is not changed; the copy is FP32, in eval mode, with the same classes and attribute names
    (so it pickles, fuses, trains and saves as usual).
    """
    if not 0.0 < flops_ratio <= 1.0:
        raise ValueError(f'FLOPs ratio must be in (0, 1], got {flops_ratio}')
    import_torch_pruning()
    model = model.module if hasattr(model, 'module') else model
    base = model_flops(deepcopy(model).float(), imgsz)
    lo, hi = 0.0, 0.95
    r = 1 - math.sqrt(flops_ratio)  # conv FLOPs ~ (1 - r)^2 when a layer's inputs and outputs both lose r
    best, best_err = None, math.inf
    for _ in range(20):
        m = _tp_prune_copy(model, r, imgsz, round_to)
        ratio = model_flops(m, imgsz) / base
        if abs(ratio - flops_ratio) < best_err:
            best, best_err, best_r, best_ratio = m, abs(ratio - flops_ratio), r, ratio
        if best_err <= tol:
            break
        lo, hi = (r, hi) if ratio > flops_ratio else (lo, r)
        guess = 1 - (1 - r) * math.sqrt(flops_ratio / max(ratio, 1e-9))  # the same square law from this point
        r = guess if lo < guess < hi else (lo + hi) / 2  # bisection whenever the guess leaves the bracket
    grad = any(p.requires_grad for p in model.parameters())
    for p in best.parameters():
        p.requires_grad_(grad)
    _check_pruned(best, model, imgsz)
    logging.getLogger('yolov5').info(f'Torch-Pruning: pruning ratio {best_r:.4f} leaves {best_ratio:.4f} of the FLOPs')
    return best


# ------------------------------------------------------------------------------------------------- measuring
def params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def conv_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{conv name: (in channels, out channels)} of every Conv2d."""
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def coupling_violations(dense: nn.Module, pruned: nn.Module) -> list[str]:
    """Names of our dependency groups (found on ``dense``) whose members ``pruned`` gives different widths."""
    widths = conv_widths(pruned)
    bad = []
    for g in channel_groups(dense):
        outs = {widths[p.name][1] for p in g.producers if p.conv is not None}
        if len(outs) > 1:
            bad.append(g.name)
    return bad


def kept_channels(dense: nn.Module, pruned: nn.Module) -> dict[str, set[int]]:
    """{Conv block name: indices of the dense output channels that ``pruned`` kept}, matched by their BatchNorm
    (weight, bias, running mean, running var), which channel pruning slices but never changes."""
    from models.common import Conv

    small = dict(pruned.named_modules())
    out = {}
    for name, m in dense.named_modules():
        if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
            def bn_rows(bn):
                return torch.stack([bn.weight, bn.bias, bn.running_mean, bn.running_var], 1).detach().float()

            a, b = bn_rows(m.bn), bn_rows(small[name].bn)
            out[name] = {int(j) for j in (b[:, None] == a[None]).all(2).float().argmax(1)}
    return out


def selection_agreement(dense: nn.Module, a: nn.Module, b: nn.Module) -> float:
    """Fraction of channels kept by both pruned models among those the narrower of the two keeps, over all convs."""
    ka, kb = kept_channels(dense, a), kept_channels(dense, b)
    both = sum(len(ka[n] & kb[n]) for n in ka)
    return both / max(sum(min(len(ka[n]), len(kb[n])) for n in ka), 1)


@torch.inference_mode()
def latency_ms(models: dict[str, nn.Module], imgsz: int = 640, repeats: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median CPU ms of a batch-1 forward at ``imgsz`` pixels per model (fused copies, repeats interleaved)."""
    fused = {k: deepcopy(m).float().cpu().fuse().eval() for k, m in models.items()}
    im = torch.zeros(1, 3, imgsz, imgsz)
    for m in fused.values():
        for _ in range(warmup):
            m(im)
    times = {k: [] for k in fused}
    for _ in range(repeats):
        for k, m in fused.items():
            t = time.perf_counter()
            m(im)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------- the benchmark
def evaluate(weights: Path, opt: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(mAP50, mAP50-95) of ``weights`` by val.run on --data at --img."""
    import val as validate

    r = validate.run(data=opt.data, weights=[str(weights)], batch_size=opt.batch_size, imgsz=opt.imgsz,
                     device=opt.device, workers=opt.workers, half=False, plots=False, verbose=False,
                     project=str(out / 'val'), name=weights.stem, exist_ok=True)[0]
    return float(r[2]), float(r[3])


def finetune(weights: Path, opt: argparse.Namespace, out: Path, seed: int) -> Path:
    """Fine-tune a pruned checkpoint as compare.py trains its rows (its own shape); returns last.pt."""
    import train as trainer

    name = f'{weights.stem}-ft-seed{seed}'
    trainer.run(weights=str(weights), data=opt.data, hyp=opt.hyp, epochs=opt.finetune_epochs, imgsz=opt.imgsz,
                batch_size=opt.train_batch_size, device=opt.device, workers=opt.workers,
                project=str(out / 'train'), name=name, exist_ok=True, noplots=True, noval=True,
                noautoanchor=True, seed=seed)
    return out / 'train' / name / 'weights' / 'last.pt'


def width_table(dense: nn.Module, ours: nn.Module, peer: nn.Module, out: Path) -> str:
    """Write widths.csv (every conv: in/out channels dense, ours, TP) and return the rows where ours and TP differ."""
    d, o, t = conv_widths(dense), conv_widths(ours), conv_widths(peer)
    rows = [(n, *d[n], *o[n], *t[n]) for n in d]
    with open(out / 'widths.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['conv', 'in_dense', 'out_dense', 'in_ours', 'out_ours', 'in_tp', 'out_tp'])
        w.writerows(rows)
    lines = [f"{'conv (in, out)':<24}{'dense':>12}{'ours':>12}{'torch-pruning':>15}"]
    lines += [f'{n:<24}{str(d[n]):>12}{str(o[n]):>12}{str(t[n]):>15}' for n in d if o[n] != t[n]]
    return '\n'.join(lines)


def run(opt: argparse.Namespace) -> list[dict]:
    """Prune (ours, Torch-Pruning), evaluate, fine-tune, evaluate, time; print the table, write peer.csv."""
    from models.experimental import attempt_load
    from utils.checkpoint import load, make_checkpoint, save
    from utils.compression.channel.pruning import amount_for_flops, prune_channels
    from utils.general import LOGGER

    import_torch_pruning()  # fail before any work
    out = Path(opt.out)
    (out / 'models').mkdir(parents=True, exist_ok=True)
    src = load(opt.weights)
    dense = attempt_load(opt.weights, fuse=False)

    t = time.time()
    amount = amount_for_flops(dense, opt.flops, 'layer', 'l1', opt.round_to, opt.imgsz)
    ours = deepcopy(dense)
    prune_channels(ours, amount, 'layer', 'l1', opt.round_to)
    t_ours = time.time() - t
    t = time.time()
    peer = prune_with_torch_pruning(dense, opt.flops, opt.imgsz, opt.round_to)
    t_peer = time.time() - t

    models = {'dense': dense, 'ours (L1, layer)': ours, 'torch-pruning (L1)': peer}
    files = {}
    for (key, m), stem in zip(models.items(), ('dense', f'ours-l1-flops{opt.flops:g}', f'tp-l1-flops{opt.flops:g}')):
        files[key] = Path(opt.weights) if key == 'dense' else out / 'models' / f'{stem}.pt'
        if key != 'dense':
            save(make_checkpoint(m, opt=src.get('opt')), files[key])
    base = model_flops(dense, 640)
    lat = latency_ms(models, opt.latency_img, opt.latency_repeats)

    rows = []
    for key, m in models.items():
        g = model_flops(m, 640)
        rows.append({'method': key, 'params': params(m), 'GFLOPs@640': round(g, 3), 'FLOPs ratio': round(g / base, 4),
                     f'ms@{opt.latency_img} (b1)': round(lat[key], 2),
                     'speedup': round(lat['dense'] / lat[key], 3), 'seed': '', 'mAP50 one-shot': 0.0,
                     'mAP50-95 one-shot': 0.0, 'mAP50-95 fine-tuned': math.nan, 'mAP50 fine-tuned': math.nan,
                     'weights': str(files[key])})
    for r, key in zip(rows, models):
        r['mAP50 one-shot'], r['mAP50-95 one-shot'] = (round(v, 4) for v in evaluate(files[key], opt, out))
    write_csv(out, rows)  # the one-shot rows, replaced by per-seed rows as the fine-tuning runs finish
    LOGGER.info('one-shot:\n' + format_table(rows, opt))
    table = rows[:1] if opt.finetune_epochs > 0 else rows
    for seed in opt.seeds if opt.finetune_epochs > 0 else []:
        for r, key in zip(rows[1:], list(models)[1:]):  # both methods per seed: paired rows survive an interruption
            row = dict(r, seed=seed)
            last = finetune(files[key], opt, out, seed)
            row['mAP50 fine-tuned'], row['mAP50-95 fine-tuned'] = (round(v, 4) for v in evaluate(last, opt, out))
            table.append(row)
            write_csv(out, table)  # partial results survive an interrupted run

    LOGGER.info(f'\nour amount {amount:.4f} of prunable channels ({t_ours:.0f} s incl. bisection); Torch-Pruning '
                f'bisection {t_peer:.0f} s; latency: CPU, {torch.get_num_threads()} threads, batch 1, '
                f'{opt.latency_img} px, median of {opt.latency_repeats} interleaved repeats')
    LOGGER.info(format_table(table, opt))
    bad = coupling_violations(dense, peer)
    LOGGER.info(f'Torch-Pruning vs our dependency groups: {len(bad)} groups with unequal member widths {bad}')
    LOGGER.info(f'channel selection: {selection_agreement(dense, ours, peer):.1%} of the kept channels are the same')
    LOGGER.info('Conv widths where the two pruners differ (full list in widths.csv):\n'
                + width_table(dense, ours, peer, out))
    return table


def write_csv(out: Path, table: list[dict]) -> None:
    """peer.csv: one row per model (and per seed for the fine-tuned ones)."""
    with open(out / 'peer.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)


def format_table(table: list[dict], opt: argparse.Namespace) -> str:
    """Markdown table of the rows, then the mean over seeds per pruned method."""
    keys = [k for k in table[0] if k != 'weights']
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(f'{r[k]:,}' if isinstance(r[k], int) and k == 'params' else str(r[k])
                                for k in keys) + ' |' for r in table]
    for method in dict.fromkeys(r['method'] for r in table[1:]):
        ft = [r['mAP50-95 fine-tuned'] for r in table if r['method'] == method]
        if len(ft) > 1:
            sd = statistics.stdev(ft)
            lines.append(f'{method}: fine-tuned mAP50-95 mean {statistics.mean(ft):.4f} ± {sd:.4f} '
                         f'over {len(ft)} seeds')
    lines.append(f'fine-tuning: {opt.finetune_epochs} epochs, hyp {Path(opt.hyp).name}, batch {opt.train_batch_size}, '
                 f'{opt.imgsz} px, seeds {" ".join(map(str, opt.seeds))}')
    return '\n'.join(lines)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    from utils.cli import float_in, int_at_least

    p = argparse.ArgumentParser(description='Torch-Pruning vs our one-shot channel pruning at the same FLOPs')
    p.add_argument('--weights', default=str(ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'), help='dense weights')
    p.add_argument('--data', default=str(ROOT / 'data' / 'shapes.yaml'), help='dataset.yaml path')
    p.add_argument('--flops', type=float_in(0, 1, lo_open=True), default=0.5, help='FLOPs ratio to keep (0-1]')
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=256, help='image size (pixels)')
    p.add_argument('--round-to', type=int_at_least(1), default=1, help='kept channels a multiple of this (both)')
    p.add_argument('--out', default=str(ROOT / 'runs' / 'peer' / 'torch-pruning'), help='output folder')
    p.add_argument('--finetune-epochs', type=int_at_least(0), default=5, help='fine-tuning epochs (0: one-shot only)')
    p.add_argument('--seeds', '--seed', nargs='+', type=int, default=[0], help='fine-tuning seeds')
    p.add_argument('--hyp', default=str(ROOT / 'data' / 'hyps' / 'hyp.finetune-sparse.yaml'), help='fine-tuning hyps')
    p.add_argument('--batch-size', type=int_at_least(1), default=32, help='val batch size')
    p.add_argument('--train-batch-size', type=int_at_least(1), default=16, help='fine-tuning batch size')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or cpu')
    p.add_argument('--workers', type=int_at_least(0), default=1, help='dataloader workers')
    p.add_argument('--latency-img', type=int_at_least(32), default=640, help='latency image size (pixels)')
    p.add_argument('--latency-repeats', type=int_at_least(1), default=30, help='interleaved latency repeats')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> list[dict]:
    from utils.checkpoint import CheckpointError
    from utils.general import set_logging

    set_logging()
    try:
        return run(opt)
    except (ImportError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
    main(parse_opt())
