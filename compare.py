"""Reproduce the comparison table: dense vs one-shot pruned vs (one-shot + fine-tuned) vs DNS.

Usage:
    python compare.py                                   # the whole story on the embedded set, offline, CPU
    python compare.py --data coco.yaml --weights yolov5x.pt --img 640 --batch-size 32 --half --finetune-epochs 0
    python compare.py --weights best.pt --dns-weights runs/train/dns50/weights/last.pt
    python compare.py --amounts 0.5 0.7 --scopes global --seeds 0 1 2     # trained rows per seed + mean ± std
    python compare.py --from-csv runs/val/compare/comparison.csv runs/val/compare2/comparison.csv   # one table
    python compare.py --structured --seeds 0 1 2        # channel pruning: latency, GFLOPs, mAP (see run_structured)
    python compare.py --share-weights dns70.pt --share-bits 3 4 5          # Deep Compression rows only
    python compare.py --deploy 'half FLOPs=s0.pt,s1.pt,s2.pt' --deploy-oneshot 0.5   # dense -> pruned -> + INT8

Rows: the dense model; one-shot `prune` at each --amounts for each --scopes; then, with a fine-tuning budget of
--finetune-epochs (> 0), for each amount: one-shot prune + fine-tuning with fixed masks, and DNS (train.py --dns)
from the same dense weights for the same number of epochs (surgery in the first half, fixed masks in the second),
once per --seeds; then any --dns-weights given. Every row is saved as
an upstream-compatible FP16 checkpoint (its size = dense MB) and in the compact sparse form (compact MB), and
evaluated by val.run. Outputs comparison.csv / .md / .png in runs/val/compare*/: the table, mean ± std over seeds
and the per-seed (paired) difference DNS - one-shot+ft.

--structured compares channel pruning instead (physically smaller models): `run_structured` lists the rows; every
row's latency is measured at the end in one interleaved session, and comparison.png plots mAP50-95 against it.

Deep Compression (--share-weights, then only these rows): for each given sparse model, the model itself ('sparse'),
and per --share-bits B one-shot weight sharing ('shared B-bit', k-means, no training) and weight sharing with
--share-epochs of centroid fine-tuning ('shared B-bit+ft', train.py --share-bits B); each also written as the
entropy-coded .deep.pt (deep MB) with its size ratio to the dense FP32 and FP16 .pt files.

The deployment ladder (--deploy, then only these rows; benchmarks/deploy_ladder.py): the dense model, one-shot
channel-pruned copies (--deploy-oneshot), and the given trained rows (one file per seed), each as its .pt, FP32 and
INT8 ONNX files and (openvino + nncf installed) FP32/INT8 OpenVINO folders: mAP, sizes, GFLOPs and latency at
--deploy-shapes next to dense FP32 in ONNX Runtime and in PyTorch; deploy_ladder.md / .csv / .png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import train as trainer
import val as validate
from benchmarks import deploy_ladder
from benchmarks.int8_bench import parse_shape
from benchmarks.latency_bench import keep_freed_memory, measure, torch_runner
from models.experimental import attempt_load
from utils.checkpoint import CheckpointError, load, make_checkpoint, release_checkpoint, save
from utils.cli import float_in, int_at_least, round_multiple
from utils.comparison import Row, merge, read_csv, unique_stems, write_all
from utils.compression.channel.dns import DNS_IMPORTANCES
from utils.compression.channel.pruning import DEFAULT_IMPORTANCE, IMPORTANCES, prune_channels, resolve_round
from utils.compression.deep.deep_file import deep_report, export_deep
from utils.compression.deep.sharing import EDGE_BITS, STEPS, share_weights
from utils.compression.options import share_bits
from utils.data_yaml import check_dataset
from utils.downloads import DownloadError, attempt_download
from utils.general import LOGGER, ROOT, colorstr, increment_path, set_logging
from utils.torch_utils import DeviceError, model_flops, prune, select_device, sparsity

DEFAULT_WEIGHTS = ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt'


def save_variant(model: torch.nn.Module, ckpt_src: dict, file: Path) -> tuple[float, float]:
    """Save ``model`` as a release-style FP16 checkpoint (dense form) and in compact form; sizes in MB."""
    ckpt = make_checkpoint(model, opt=ckpt_src.get('opt'))
    save(ckpt, file)
    compact = file.with_name(file.stem + '.compact.pt')
    save(ckpt, compact, compact=True)
    return file.stat().st_size / 1e6, compact.stat().st_size / 1e6


def evaluate(weights: Path, opt: argparse.Namespace, save_dir: Path, row: Row, save_json: bool) -> Row:
    """Run val.run on ``weights`` and copy its metrics.json into ``row``."""
    validate.run(data=opt.data, weights=[str(weights)], batch_size=opt.batch_size, imgsz=opt.imgsz,
                 device=opt.device, workers=opt.workers, half=opt.half, save_json=save_json, plots=False,
                 project=str(save_dir / 'val'), name=weights.stem, exist_ok=True, verbose=False)
    m = json.loads((save_dir / 'val' / weights.stem / 'metrics.json').read_text())
    nan = math.nan
    row.sparsity, row.sparsity_all = m['sparsity'], m['sparsity_all']
    row.P, row.R, row.mAP50, row.mAP50_95 = m['P'], m['R'], m['mAP50'], m['mAP50-95']
    row.coco_AP = nan if m['coco_AP'] is None else m['coco_AP']
    row.coco_AR100 = nan if m['coco_AR100'] is None else m['coco_AR100']
    row.ms_per_img, row.batch, row.precision = m['ms_per_img'], m['batch'], m['precision']
    row.weights = str(weights)
    return row


def finetune(dense: Path, amount: float, opt: argparse.Namespace, save_dir: Path, surgery: bool, seed: int) -> Path:
    """Train from ``dense`` for --finetune-epochs to ``amount`` sparsity: DNS (surgery) or fixed one-shot masks."""
    name = f"{'dns' if surgery else 'oneshot-ft'}-{opt.finetune_scope}-{amount:g}"
    name += f'-seed{seed}' if len(opt.seeds) > 1 else ''
    trainer.run(weights=str(dense), data=opt.data, hyp=opt.hyp, epochs=opt.finetune_epochs, imgsz=opt.imgsz,
                batch_size=opt.train_batch_size, device=opt.device, workers=opt.workers, dns=True,
                target_sparsity=amount, dns_scope=opt.finetune_scope,
                dns_schedule=opt.dns_schedule if surgery else None,
                dns_surgery_epochs=None if surgery else 0,  # None: train.py's default, the first half of the epochs
                project=str(save_dir / 'train'), name=name, exist_ok=True, noplots=True, noval=True,
                noautoanchor=True, seed=seed)
    return save_dir / 'train' / name / 'weights' / 'last.pt'


def add_deep_size(file: Path, row: Row) -> Row:
    """Write ``file``'s entropy-coded .deep.pt; fill the row's deep MB and size ratios."""
    report = deep_report(export_deep(file))
    row.size_deep_mb, row.ratio_fp32, row.ratio_fp16 = report.file_bytes / 1e6, report.ratio_fp32, report.ratio_fp16
    return row


def share_finetune(weights: Path, name: str, bits: int, opt: argparse.Namespace, save_dir: Path) -> Path:
    """train.py --share-bits: weight sharing of ``weights`` + --share-epochs of centroid fine-tuning under the run
    ``name``; returns its last.pt."""
    trainer.run(weights=str(weights), data=opt.data, hyp=opt.hyp, epochs=opt.share_epochs, imgsz=opt.imgsz,
                batch_size=opt.train_batch_size, device=opt.device, workers=opt.workers, share_bits=bits,
                share_edge_bits=opt.share_edge_bits, share_step=opt.share_step, project=str(save_dir / 'train'),
                name=name, exist_ok=True, noplots=True, noval=True, noautoanchor=True, seed=opt.seeds[0])
    return save_dir / 'train' / name / 'weights' / 'last.pt'


def dense_weights(opt: argparse.Namespace, save_dir: Path) -> Path:
    """--weights (an official name missing on disk is downloaded), or the shipped embedded-set model, or (if neither
    exists) a freshly trained yolov5n."""
    if opt.weights:
        return attempt_download(opt.weights)
    if DEFAULT_WEIGHTS.exists():
        return DEFAULT_WEIGHTS
    LOGGER.info(f'{DEFAULT_WEIGHTS} not found: training a dense yolov5n from scratch for {opt.dense_epochs} epochs')
    trainer.run(data=opt.data, cfg='yolov5n.yaml', weights='', epochs=opt.dense_epochs, imgsz=opt.imgsz,
                batch_size=opt.train_batch_size, device=opt.device, workers=opt.workers,
                project=str(save_dir / 'train'), name='dense', exist_ok=True, seed=opt.seeds[0])
    return save_dir / 'train' / 'dense' / 'weights' / 'best.pt'


def merge_tables(opt: argparse.Namespace) -> list[Row]:
    """--from-csv: rows of earlier comparison.csv files in one table (e.g. seeds run in separate commands)."""
    rows = merge([read_csv(Path(f)) for f in opt.from_csv])
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    note = '(nothing re-evaluated)'
    if opt.structured:  # latencies from separate runs do not compare: time every row again, in one session
        measure_latency(rows, opt)
        note = (f'(mAP not re-evaluated; latency of all rows re-measured in one session: batch 1 at {opt.latency_img} '
                f'px, median of {opt.latency_repeats} interleaved repeats)')
    return publish(rows, save_dir, f'Merged by `python compare.py --from-csv {" ".join(opt.from_csv)}'
                                   f'{" --structured" if opt.structured else ""}` {note}.', structured=opt.structured)


def publish(rows: list[Row], save_dir: Path, caption: str, structured: bool = False) -> list[Row]:
    """Write comparison.{csv,md,png} into ``save_dir`` and log the table; returns ``rows``."""
    out = write_all(rows, save_dir, caption, structured)
    LOGGER.info('\n' + out['md'].read_text())
    LOGGER.info(f'comparison written to {save_dir} ({", ".join(p.name for p in out.values())})')
    return rows


def channel_train(weights: Path, opt: argparse.Namespace, save_dir: Path, name: str, seed: int,
                  epochs: int | None = None, **kw) -> Path:
    """One train.py run from ``weights`` (budget --finetune-epochs unless ``epochs``); returns its last.pt."""
    trainer.run(weights=str(weights), data=opt.data, hyp=opt.hyp, epochs=epochs or opt.finetune_epochs,
                imgsz=opt.imgsz, batch_size=opt.train_batch_size, device=opt.device, workers=opt.workers,
                project=str(save_dir / 'train'), name=name, exist_ok=True, noplots=True, noval=True,
                noautoanchor=True, seed=seed, **kw)
    return save_dir / 'train' / name / 'weights' / 'last.pt'


def channel_dns_kw(amount: float, opt: argparse.Namespace, importance: str, surgery: bool) -> dict:
    """train.py options of channel DNS (surgery) or one-shot channel pruning + fine-tuning (no surgery)."""
    return dict(dns=True, dns_granularity='channel', target_sparsity=amount, dns_scope=opt.channel_scope,
                prune_importance=importance, prune_round=opt.prune_round,
                dns_surgery_epochs=None if surgery else 0)  # None: train.py's default, the first half


def measure_latency(rows: list[Row], opt: argparse.Namespace) -> None:
    """Fill gflops and latency_ms of every row: its saved model, fused, batch 1 at --latency-img, all rows timed
    in one interleaved session (benchmarks/latency_bench.measure), median of --latency-repeats, freed memory kept
    in the process (latency_bench.keep_freed_memory: no page faults for every run's activations)."""
    device = select_device(opt.device)
    if device.type == 'cpu':
        keep_freed_memory()
    models = {}
    for i, r in enumerate(rows):
        m = attempt_load(r.weights, device=device)  # fused, eval
        r.gflops = model_flops(m, 640)
        models[i] = m.half() if opt.half and device.type == 'cuda' else m
    x = torch.zeros(1, 3, opt.latency_img, opt.latency_img, device=device,
                    dtype=torch.half if opt.half and device.type == 'cuda' else torch.float)
    t = measure({i: torch_runner(m, x) for i, m in models.items()}, device, opt.latency_repeats)
    for i, r in enumerate(rows):
        r.latency_ms = t[i] * 1e3


def run_structured(opt: argparse.Namespace, save_dir: Path, dense: Path, one) -> list[Row]:
    """Channel-pruning rows: dense; one-shot channel pruning by each of --importances at each --amounts (fraction
    of prunable channels); per seed: each + fine-tuning, network slimming (--slim-lambda for the budget, prune by
    |gamma|, fine-tune: twice the budget), channel DNS (--dns-importance); then --peer (Torch-Pruning at the same
    FLOPs as our first importance's one-shot model, + fine-tuning). Latency of all rows is measured at the end in
    one session."""
    rows = [one(attempt_load(dense, fuse=False), Row('dense'), 'dense')]
    flops_ratio = {}
    for a in opt.amounts:
        for imp in opt.importances:
            model = attempt_load(dense, fuse=False)
            prune_channels(model, a, opt.channel_scope, imp, opt.prune_round)
            if a not in flops_ratio:  # the peer's FLOPs target: our first importance's model
                flops_ratio[a] = model_flops(model, 640) / model_flops(attempt_load(dense, fuse=False), 640)
            rows.append(one(model, Row(f'ch one-shot ({imp})', opt.channel_scope, a), f'ch-oneshot-{imp}-{a:g}'))
    if opt.finetune_epochs > 0:
        for seed in opt.seeds:
            slim = None
            for a in opt.amounts:
                tag = f'{a:g}-seed{seed}'
                runs = [(f'ch one-shot+ft ({imp})', f'ch-oneshot-ft-{imp}-{tag}', dense,
                         channel_dns_kw(a, opt, imp, surgery=False), opt.finetune_epochs) for imp in opt.importances]
                if opt.slim_lambda > 0:
                    if slim is None:  # one slimming run per seed, shared by the amounts
                        slim = channel_train(dense, opt, save_dir, f'slim-seed{seed}', seed, slim=opt.slim_lambda)
                    runs.append(('slim+ft', f'slim-ft-{tag}', slim, channel_dns_kw(a, opt, 'bn', surgery=False),
                                 2 * opt.finetune_epochs))
                runs.append((f'ch dns ({opt.dns_importance})', f'ch-dns-{opt.dns_importance}-{tag}', dense,
                             channel_dns_kw(a, opt, opt.dns_importance, surgery=True), opt.finetune_epochs))
                if opt.peer:
                    from benchmarks.torch_pruning_peer import prune_with_torch_pruning
                    peer = save_dir / 'models' / f'torch-pruning-{tag}-start.pt'
                    save(make_checkpoint(prune_with_torch_pruning(attempt_load(dense, fuse=False), flops_ratio[a],
                                                                  imgsz=opt.imgsz)), peer)
                    runs.append(('torch-pruning+ft', f'tp-ft-{tag}', peer, {}, opt.finetune_epochs))
                for method, name, start, kw, budget in runs:
                    last = channel_train(start, opt, save_dir, name, seed, **kw)
                    rows.append(one(attempt_load(last, fuse=False),
                                    Row(method, opt.channel_scope, a, epochs=budget, seed=seed), name))
    measure_latency(rows, opt)
    return rows


def hardware(device: str) -> str:
    """'NVIDIA H100 ...' or 'CPU (2 threads)': where the table was made, for its caption."""
    d = select_device(device)
    return torch.cuda.get_device_name(d) if d.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'


def run(opt: argparse.Namespace) -> list[Row]:
    """Build every row, evaluate it, write comparison.{csv,md,png}; returns the rows."""
    if opt.from_csv:
        return merge_tables(opt)
    t0 = time.time()
    if opt.data is None:  # follow the dense weights, as val.py does (the shipped model: the embedded set)
        opt.data, why = validate.default_data(validate.resolve_weights(opt.weights or None))
        LOGGER.info(f'data={opt.data} ({why})')
    data = check_dataset(opt.data)
    save_json = bool(data.get('coco_json')) or 'coco' in str(opt.data)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    models_dir = save_dir / 'models'
    models_dir.mkdir(parents=True, exist_ok=True)
    dense = dense_weights(opt, save_dir)
    src = load(dense)

    def one(model: torch.nn.Module, row: Row, stem: str) -> Row:
        file = models_dir / f'{stem}.pt'
        row.size_dense_mb, row.size_compact_mb = save_variant(model, src, file)
        row.params = sum(p.numel() for p in model.parameters())
        rows.append(evaluate(file, opt, save_dir, row, save_json))
        LOGGER.info(f"{colorstr('compare:')} {row.method} {row.scope} {row.target:g}: sparsity {row.sparsity:.3f} "
                    f'mAP50-95 {row.mAP50_95:.3f}')
        return row

    rows: list[Row] = []
    if opt.structured:
        rows = run_structured(opt, save_dir, dense, one)
        where = hardware(opt.device)
        caption = (f'{Path(opt.data).name}, {opt.imgsz} px; dense weights {dense}; channel pruning ({opt.channel_scope} '
                   f'scope, kept channels rounded to {opt.prune_round}); trained rows {opt.finetune_epochs} epochs each '
                   f'(slim+ft: {opt.finetune_epochs} slimming epochs with lambda {opt.slim_lambda:g}, then '
                   f'{opt.finetune_epochs} fine-tuning), hyp {Path(opt.hyp).name}, seeds {" ".join(map(str, opt.seeds))}; '
                   f'latency: batch 1 at {opt.latency_img} px, median of {opt.latency_repeats} interleaved repeats. '
                   f'Made by `python {" ".join(sys.argv) if sys.argv[0].endswith("compare.py") else "compare.py --structured"}` '
                   f'in {time.time() - t0:.0f} s on {where}.')
        return publish(rows, save_dir, caption, structured=True)
    if opt.share_weights:
        files = list(map(Path, opt.share_weights))
        for w, name in zip(files, unique_stems(files)):
            model = release_checkpoint(load(w))['model'].float()
            target = round(sparsity(model).prunable, 2)
            add_deep_size(models_dir / f'{name}.pt', one(model, Row('sparse', '-', target), name))
            for b in opt.share_bits:
                shared = release_checkpoint(load(w))['model'].float()
                share_weights(shared, b, edge_bits=opt.share_edge_bits)
                stem = f'{name}-shared{b}' + (f'e{opt.share_edge_bits}' if opt.share_edge_bits != b else '')
                add_deep_size(models_dir / f'{stem}.pt', one(shared, Row(f'shared {b}-bit', '-', target, share_bits=b),
                                                             stem))
                if opt.share_epochs > 0:
                    last = share_finetune(w, stem, b, opt, save_dir)
                    row = Row(f'shared {b}-bit+ft', '-', target, epochs=opt.share_epochs, seed=opt.seeds[0],
                              share_bits=b)
                    add_deep_size(models_dir / f'{stem}-ft.pt', one(attempt_load(last, fuse=False), row, f'{stem}-ft'))
        return publish(rows, save_dir, f'Deep Compression rows of {" ".join(opt.share_weights)}: '
                                       f'{opt.share_epochs} epochs of centroid fine-tuning (step {opt.share_step}), '
                                       f'first conv and Detect outputs at '
                                       f'{opt.share_edge_bits} bits, '
                                       f'hyp {Path(opt.hyp).name}, '
                                       f'{Path(opt.data).name}, {opt.imgsz} px. Made by `python '
                                       f'{" ".join(sys.argv) if sys.argv[0].endswith("compare.py") else "compare.py"}`'
                                       f' in {time.time() - t0:.0f} s.')
    one(attempt_load(dense, fuse=False), Row('dense'), 'dense')
    for scope in opt.scopes:
        for a in opt.amounts:
            model = attempt_load(dense, fuse=False)
            prune(model, a, scope=scope)
            one(model, Row('one-shot', scope, a), f'oneshot-{scope}-{a:g}')
    if opt.finetune_epochs > 0:
        for a in opt.amounts:
            for seed in opt.seeds:
                for method, surgery in (('one-shot+ft', False), ('dns', True)):
                    last = finetune(dense, a, opt, save_dir, surgery, seed)
                    one(attempt_load(last, fuse=False),
                        Row(method, opt.finetune_scope, a, epochs=opt.finetune_epochs, seed=seed),
                        last.parents[1].name)  # the training run's name, e.g. dns-global-0.5
    for w in opt.dns_weights:
        model = attempt_load(w, fuse=False)
        rep = sparsity(model)
        one(model, Row('dns', '-', round(rep.prunable, 2)), f'dns-given-{Path(w).stem}')
    where = hardware(opt.device)
    caption = (f'{Path(opt.data).name}, {opt.imgsz} px, val batch {opt.batch_size}; dense weights {dense}; '
               f'trained rows: {opt.finetune_epochs} epochs each (DNS: {opt.dns_schedule or "constant"} schedule, '
               f'surgery in the first half), '
               f'{opt.finetune_scope} scope, '
               f'hyp {Path(opt.hyp).name}, seeds {" ".join(map(str, opt.seeds))}. '
               f'Made by `python {" ".join(sys.argv) if sys.argv[0].endswith("compare.py") else "compare.py"}` '
               f'in {time.time() - t0:.0f} s on {where}.')
    return publish(rows, save_dir, caption)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Dense vs one-shot pruned vs DNS comparison table')
    p.add_argument('--data', default=None, help="dataset.yaml path (default: as val.py, the dense weights' data set)")
    p.add_argument('--weights', default='', help=f'dense weights (default {DEFAULT_WEIGHTS.relative_to(ROOT)}, '
                                                 'trained first if missing)')
    p.add_argument('--amounts', nargs='+', type=float_in(0, 1, lo_open=True, hi_open=True), default=None,
                   help='sparsities to compare (default 0.3 0.5 0.7; with --structured: fractions of prunable channels, '
                        'default 0.3)')
    p.add_argument('--scopes', nargs='+', choices=['layer', 'global'], default=['layer', 'global'],
                   help='one-shot pruning scopes')
    p.add_argument('--finetune-epochs', type=int_at_least(0), default=5,
                   help='epochs of fine-tuning for one-shot+ft and of DNS training per amount; 0 skips training rows')
    p.add_argument('--finetune-scope', choices=['layer', 'global'], default='global',
                   help='sparsity scope of the trained rows (one-shot+ft and DNS)')
    p.add_argument('--dns-schedule', choices=['constant', 'cubic'], default=None,
                   help="schedule of the DNS rows (default: train.py's, constant)")
    p.add_argument('--dns-weights', nargs='*', default=[], help='extra DNS-trained checkpoints to add as rows')
    p.add_argument('--dense-epochs', type=int_at_least(0), default=30, help='epochs if the dense model must be trained')
    p.add_argument('--hyp', default=str(ROOT / 'data' / 'hyps' / 'hyp.finetune-sparse.yaml'), help='fine-tuning hyps')
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=256, help='image size (pixels)')
    p.add_argument('--batch-size', type=int, default=32, help='val batch size')
    p.add_argument('--train-batch-size', type=int, default=16, help='fine-tuning batch size')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or cpu')
    p.add_argument('--workers', type=int, default=2, help='dataloader workers')
    p.add_argument('--half', action='store_true', help='FP16 evaluation (CUDA only)')
    p.add_argument('--seeds', '--seed', nargs='+', type=int, default=[0],
                   help='training seeds: each trained row is repeated per seed (mean ± std table for 2 or more)')
    p.add_argument('--structured', action='store_true',
                   help='channel pruning instead: one-shot (L1, |gamma|), + fine-tuning, slimming, channel DNS, with '
                        'params, GFLOPs, measured latency and a mAP-vs-latency plot; --amounts are channel fractions')
    p.add_argument('--channel-scope', choices=['layer', 'global'], default='layer', help='--structured: scope')
    p.add_argument('--importances', nargs='+', choices=IMPORTANCES, default=list(IMPORTANCES),
                   help='--structured: channel importances of the one-shot and one-shot+ft rows')
    p.add_argument('--dns-importance', choices=DNS_IMPORTANCES, default=DEFAULT_IMPORTANCE,
                   help='--structured: channel importance of the channel DNS rows')
    p.add_argument('--prune-round', type=round_multiple, default=1, metavar='N',
                   help="--structured: kept channels rounded up to a multiple of N (auto: the device's kernel width)")
    p.add_argument('--slim-lambda', type=float_in(0, math.inf, hi_open=True), default=1e-2, metavar='LAMBDA',
                   help='--structured: network slimming penalty of the slim+ft rows (0 skips them)')
    p.add_argument('--peer', action='store_true',
                   help='--structured: add Torch-Pruning (pip install torch-pruning) at the same FLOPs + fine-tuning')
    p.add_argument('--latency-img', type=int_at_least(32), default=640, help='--structured: latency image size')
    p.add_argument('--latency-repeats', type=int_at_least(1), default=10, help='--structured: timing rounds')
    p.add_argument('--share-weights', nargs='+', default=[], metavar='W',
                   help='Deep Compression rows only: sparse (pruned / DNS) checkpoints to weight-share and entropy-code')
    p.add_argument('--share-bits', nargs='+', type=share_bits, default=[3, 4, 5],
                   help='--share-weights: bits per shared index, 2^B centroids per layer')
    p.add_argument('--share-edge-bits', type=share_bits, default=EDGE_BITS, metavar='B',
                   help=f'--share-weights: bits of the first conv and the Detect output convs (default {EDGE_BITS})')
    p.add_argument('--share-epochs', type=int_at_least(0), default=1,
                   help='--share-weights: epochs of centroid fine-tuning (train.py --share-bits); 0 skips those rows')
    p.add_argument('--share-step', choices=STEPS, default=STEPS[0],
                   help='--share-weights: centroid step of the fine-tuning (train.py --share-step)')
    p.add_argument('--deploy', nargs='*', default=None, metavar='NAME=W1,W2',
                   help="the deployment ladder: dense -> one-shot channel-pruned -> these trained rows ('NAME=w1.pt,"
                        "w2.pt', one file per seed) -> INT8, in PyTorch, ONNX Runtime and OpenVINO")
    p.add_argument('--deploy-oneshot', nargs='*', type=float_in(0, 1, lo_open=True, hi_open=True), default=[0.5],
                   metavar='F', help='--deploy: rows of the dense model channel-pruned to F of its FLOPs (global scope, '
                                     "widths rounded to --prune-round, default the device's kernel width), no training")
    p.add_argument('--deploy-shapes', nargs='+', type=parse_shape, default=[(1, 640), (32, 256)], metavar='BxS',
                   help='--deploy: latency batch x image size')
    p.add_argument('--calib-images', type=int_at_least(1), default=128, help='--deploy: INT8 calibration images')
    p.add_argument('--from-csv', nargs='+', default=[], metavar='CSV',
                   help='merge earlier comparison.csv files into one table (and seed summaries); evaluates nothing')
    p.add_argument('--project', default=str(ROOT / 'runs' / 'val'), help='save to project/name')
    p.add_argument('--name', default='compare', help='save to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    opt = p.parse_args(argv)
    if opt.amounts is None:  # channel fraction 0.3 leaves about half of the FLOPs
        opt.amounts = [0.3] if opt.structured else [0.3, 0.5, 0.7]
    opt.prune_round = resolve_round(opt.prune_round, opt.device)
    return opt


def run_deploy(opt: argparse.Namespace) -> Path:
    """--deploy: benchmarks/deploy_ladder.run on the dense --weights and the given rows; returns the output folder."""
    dense = validate.resolve_weights(opt.weights or None)
    if not dense:
        raise ValueError('--deploy needs dense --weights (the shipped model is missing)')
    data = opt.data or validate.default_data(dense)[0]
    round_to = opt.prune_round if opt.prune_round > 1 else resolve_round('auto', opt.device)
    return deploy_ladder.run(Path(dense[0]), deploy_ladder.parse_rows(opt.deploy), str(data), opt.imgsz,
                             opt.calib_images, tuple(opt.deploy_shapes), opt.latency_repeats,
                             tuple(opt.deploy_oneshot), round_to, True,
                             Path(opt.project) / (opt.name if opt.name != 'compare' else 'deploy-ladder'))


def main(opt: argparse.Namespace) -> list[Row]:
    set_logging()
    try:
        if opt.deploy is not None:
            run_deploy(opt)
            return []
        return run(opt)
    except (CheckpointError, DownloadError, DeviceError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
    main(parse_opt())
