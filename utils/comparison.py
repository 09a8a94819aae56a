"""The comparison table (dense vs one-shot pruned vs DNS): rows, CSV / Markdown / PNG writers.

One row per evaluated model. Columns are fixed (COLUMNS) so tables from different runs line up;
missing values (e.g. COCO AP on a set without COCO annotations) are written as empty cells / '-'.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class Row:
    """One evaluated model. Fractions in 0-1, times in ms per image, sizes in MB (1e6 bytes)."""

    method: str  # 'dense', 'one-shot', 'one-shot+ft', 'dns'
    scope: str = '-'  # 'layer' | 'global' | '-'
    target: float = 0.0  # requested sparsity (fraction of prunable weights)
    sparsity: float = 0.0  # measured zeros / prunable (Conv2d) weights
    sparsity_all: float = 0.0  # measured zeros / all parameters
    P: float = math.nan
    R: float = math.nan
    mAP50: float = math.nan
    mAP50_95: float = math.nan
    coco_AP: float = math.nan  # pycocotools AP@[.5:.95] when COCO annotations exist
    coco_AR100: float = math.nan  # pycocotools AR@100
    ms_per_img: float = math.nan  # inference only
    batch: int = 0
    precision: str = 'fp32'
    params: int = 0
    size_dense_mb: float = math.nan  # upstream-compatible FP16 .pt
    size_compact_mb: float = math.nan  # bitmask + non-zero values .pt
    epochs: int = 0  # fine-tuning / DNS epochs spent after the dense model
    seed: int | None = None  # training seed of a fine-tuned / DNS row (None: no training)
    weights: str = ''
    gflops: float = math.nan  # at 640 px (torch's flop counter, 2 x MACs like upstream)
    latency_ms: float = math.nan  # measured in one interleaved session over all rows (see compare.py --structured)
    # Deep Compression rows (compare.py --share-weights): bits per shared index (0: not shared), entropy-coded
    # .deep.pt size in MB and the ratios dense FP32 / FP16 .pt bytes over it
    share_bits: int = 0
    size_deep_mb: float = math.nan
    ratio_fp32: float = math.nan
    ratio_fp16: float = math.nan


COLUMNS = [f.name for f in fields(Row)]
DEEP_COLUMNS = ['share_bits', 'size_deep_mb', 'ratio_fp32', 'ratio_fp16']  # optional in a comparison.csv
OPTIONAL = ('gflops', 'latency_ms', *DEEP_COLUMNS)  # columns added later: older comparison.csv files lack them


def _fmt(v: object) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return '-' if math.isnan(v) else f'{v:.4g}' if abs(v) >= 1 else f'{v:.3f}'
    return str(v)


def write_csv(rows: list[Row], file: Path) -> Path:
    """comparison.csv: one header line (COLUMNS), one line per row; NaN -> empty cell."""
    with open(file, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ('' if v is None or isinstance(v, float) and math.isnan(v) else v)
                        for k, v in asdict(r).items()})
    return file


def markdown(rows: list[Row]) -> str:
    """A GitHub table of the user-facing columns (ready to paste in a README)."""
    cols = ['method', 'scope', 'target', 'sparsity', 'sparsity_all', 'P', 'R', 'mAP50', 'mAP50_95', 'coco_AP',
            'coco_AR100', 'ms_per_img', 'batch', 'precision', 'params', 'size_dense_mb', 'size_compact_mb', 'epochs',
            'seed']
    head = ['method', 'scope', 'target', 'sparsity (conv)', 'sparsity (all)', 'P', 'R', 'mAP50', 'mAP50-95',
            'COCO AP', 'COCO AR@100', 'ms/img', 'batch', 'prec.', 'params', 'dense MB', 'compact MB', 'epochs', 'seed']
    if any(not math.isnan(r.size_deep_mb) for r in rows):  # Deep Compression columns only where measured
        cols += DEEP_COLUMNS
        head += ['share bits', 'deep MB', 'x FP32', 'x FP16']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        d = asdict(r)
        lines.append('| ' + ' | '.join(_fmt(d[c]) for c in cols) + ' |')
    return '\n'.join(lines) + '\n'


def _trained_groups(rows: list[Row]) -> dict[tuple[str, str, float, int], list[Row]]:
    """Trained rows (seed set) grouped by (method, scope, target, epochs), in first-seen order."""
    groups: dict[tuple[str, str, float, int], list[Row]] = {}
    for r in rows:
        if r.seed is not None:
            groups.setdefault((r.method, r.scope, r.target, r.epochs), []).append(r)
    return groups


def _table(head: list[str], lines: list[str]) -> str:
    return '\n'.join(['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head), *lines]) + '\n' if lines else ''


def seed_summary(rows: list[Row]) -> str:
    """Markdown table of mean ± sample std over seeds for each trained (method, scope, target, epochs), >= 2 seeds.

    Empty string when no group was trained with more than one seed.
    """
    lines = []
    for (method, scope, target, epochs), rs in _trained_groups(rows).items():
        if len(rs) < 2:
            continue
        cells = [method, scope, f'{target:.3f}', str(epochs), str(len(rs)), ' '.join(str(r.seed) for r in rs)]
        for key in ('mAP50', 'mAP50_95', 'coco_AP'):
            v = [getattr(r, key) for r in rs]
            cells.append('-' if any(math.isnan(x) for x in v) else f'{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return _table(['method', 'scope', 'target', 'epochs', 'runs', 'seeds', 'mAP50', 'mAP50-95', 'COCO AP'], lines)


def paired_summary(rows: list[Row], method: str = 'dns', baseline: str = 'one-shot+ft') -> str:
    """Markdown table of the per-seed mAP50-95 difference ``method`` - ``baseline`` (same scope, target, epochs, seed).

    Both were trained from the same dense weights with the same seed, so the seed's data order and augmentation
    are shared: the paired difference is the fairer statistic. Columns: seeds paired, wins (method higher),
    mean ± sample std and median of the differences, the per-seed differences. Empty string when nothing pairs.
    """
    groups = _trained_groups(rows)
    lines = []
    for (m, scope, target, epochs), rs in groups.items():
        if m != method:
            continue
        base = {r.seed: r.mAP50_95 for r in groups.get((baseline, scope, target, epochs), [])}
        diffs = [(r.seed, r.mAP50_95 - base[r.seed]) for r in rs if r.seed in base]
        if not diffs:
            continue
        d = [x for _, x in diffs]
        spread = f' ± {statistics.stdev(d):.3f}' if len(d) > 1 else ''
        lines.append(f'| {scope} | {target:.3f} | {epochs} | {len(d)} | {sum(x > 0 for x in d)}/{len(d)} | '
                     f'{statistics.mean(d):+.3f}{spread} | {statistics.median(d):+.3f} | '
                     + ', '.join(f'{s}: {x:+.3f}' for s, x in diffs) + ' |')
    return _table(['scope', 'target', 'epochs', 'seeds', f'{method} higher', f'mean {method} - {baseline}', 'median',
                   'per seed'], lines)


def read_csv(file: Path) -> list[Row]:
    """Rows of a comparison.csv written by `write_csv` (empty cell -> NaN, or None for seed)."""
    types = {f.name: f.type for f in fields(Row)}
    rows = []
    with open(file, newline='') as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or []) - set(OPTIONAL)
        if missing:
            raise ValueError(f'{file} is not a comparison.csv: missing columns {", ".join(sorted(missing))}')
        for d in reader:
            kw: dict[str, object] = {}
            for k in COLUMNS:
                v, t = d.get(k) or '', types[k]
                if k == 'seed':
                    kw[k] = int(v) if v else None
                elif t == 'float':
                    kw[k] = float(v) if v else math.nan
                elif t == 'int':
                    kw[k] = int(float(v)) if v else 0
                else:
                    kw[k] = v
            rows.append(Row(**kw))
    return rows


def merge(tables: list[list[Row]]) -> list[Row]:
    """Concatenate row lists, dropping repeats of an untrained row (same method, scope, target) or of a trained
    (method, scope, target, epochs, seed): e.g. the dense and one-shot rows that every comparison.csv holds."""
    seen, out = set(), []
    for rows in tables:
        for r in rows:
            key = (r.method, r.scope, r.target, r.epochs, r.seed)
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def plot(rows: list[Row], file: Path) -> Path:
    """comparison.png: mAP50-95 (and mAP50, dashed) vs measured sparsity, one line per method/scope (and budget).

    Rows repeated over seeds are drawn as their mean with a ±1 std bar, each seed as a faint dot.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), tight_layout=True)
    ax = fig.add_subplot()
    dense = [r for r in rows if r.method == 'dense']
    budgets = {r.epochs for r in rows if r.seed is not None}
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.method != 'dense':
            label = r.method if r.scope == '-' else f'{r.method} ({r.scope})'
            label += f' {r.epochs} ep' if len(budgets) > 1 and r.seed is not None else ''
            groups.setdefault(label, []).append(r)
    for i, (label, rs) in enumerate(sorted(groups.items())):
        points: dict[float, list[Row]] = {}
        for r in [*dense[:1], *rs]:
            points.setdefault(r.target, []).append(r)
        targets = sorted(points)
        color = f'C{i}'
        x = [statistics.mean(r.sparsity * 100 for r in points[t]) for t in targets]
        for key, style, alpha, name in (('mAP50_95', 'o-', 1.0, 'mAP50-95'), ('mAP50', '.--', 0.5, 'mAP50')):
            vals = [[getattr(r, key) for r in points[t]] for t in targets]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.errorbar(x, [statistics.mean(v) for v in vals], yerr=err if any(err) else None, fmt=style,
                        color=color, alpha=alpha, capsize=3, label=f'{label} {name}')
            for xi, v in zip(x, vals):
                if len(v) > 1:
                    ax.plot([xi] * len(v), v, '.', color=color, alpha=0.3 * alpha)
    for r in dense:
        ax.axhline(r.mAP50_95, color='k', lw=0.8, ls=':', label='dense mAP50-95')
    ax.set_xlabel('sparsity of Conv2d weights (%)')
    ax.set_ylabel('mAP')
    ax.set_xlim(-2, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower left')
    fig.savefig(file, dpi=150)
    return file


def structured_markdown(rows: list[Row]) -> str:
    """The channel-pruning table: structure (params, GFLOPs), measured latency and speed-up over dense, accuracy."""
    dense = next((r.latency_ms for r in rows if r.method == 'dense'), math.nan)
    head = ['method', 'scope', 'channels pruned', 'params', 'GFLOPs@640', 'latency ms', 'speed-up', 'mAP50',
            'mAP50-95', 'epochs', 'seed']
    lines = [f'| {r.method} | {r.scope} | {_fmt(r.target)} | {r.params:,} | {_fmt(r.gflops)} | {_fmt(r.latency_ms)} | '
             f'{_fmt(dense / r.latency_ms)}x | {_fmt(r.mAP50)} | {_fmt(r.mAP50_95)} | {r.epochs} | {_fmt(r.seed)} |'
             for r in rows]
    return _table(head, lines)


def plot_pareto(rows: list[Row], file: Path) -> Path:
    """comparison.png for channel pruning: mAP50-95 against measured latency, one marker per method; rows repeated
    over seeds drawn as mean ± std (both axes), each seed as a faint dot. Up and left is better."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), tight_layout=True)
    ax = fig.add_subplot()
    groups: dict[tuple[str, float], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.target), []).append(r)
    methods = sorted({m for m, _ in groups})
    for (method, target), rs in groups.items():
        color = f'C{methods.index(method)}'
        x, y = [r.latency_ms for r in rs], [r.mAP50_95 for r in rs]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.errorbar(statistics.mean(x), statistics.mean(y), xerr=sd(x) or None, yerr=sd(y) or None, fmt='o',
                    color=color, capsize=3, label=method if target == min(t for m, t in groups if m == method) else None)
        if len(rs) > 1:
            ax.plot(x, y, '.', color=color, alpha=0.3)
        if method != 'dense':
            ax.annotate(f'{target:g}', (statistics.mean(x), statistics.mean(y)), fontsize=6,
                        xytext=(3, 3), textcoords='offset points')
    ax.set_xlabel('latency per image (ms, measured in one session)')
    ax.set_ylabel('mAP50-95')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower right')
    fig.savefig(file, dpi=150)
    return file


def structured_pairs(rows: list[Row]) -> list[tuple[str, str]]:
    """(channel DNS method, one-shot + fine-tuning method) with the same importance, for every 'ch dns (X)' row
    ('ch dns' alone, from tables made before the importance was named, used |gamma|)."""
    pairs = []
    for m in dict.fromkeys(r.method for r in rows if r.method.startswith('ch dns')):
        imp = m[len('ch dns ('):-1] if m.startswith('ch dns (') else 'bn'
        pairs.append((m, f'ch one-shot+ft ({imp})'))
    return pairs


def write_all(rows: list[Row], save_dir: Path, caption: str = '', structured: bool = False) -> dict[str, Path]:
    """Write comparison.csv, comparison.md (table, then ``caption`` if given) and comparison.png into ``save_dir``.

    ``structured``: the channel-pruning table (latency, GFLOPs) and the mAP-vs-latency plot; DNS is paired with
    one-shot + fine-tuning by the same channel importance (`structured_pairs`).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    md = save_dir / 'comparison.md'
    summary = seed_summary(rows)
    pairs = structured_pairs(rows) if structured else [('dns', 'one-shot+ft')]
    paired = ''.join(f'\n{dns} minus {base}, mAP50-95, paired by seed:\n\n{table}'
                     for dns, base in pairs if (table := paired_summary(rows, dns, base)))
    table = structured_markdown(rows) if structured else markdown(rows)
    md.write_text(table + (f'\nMean ± std over training seeds:\n\n{summary}' if summary else '') + paired
                  + (f'\n{caption}\n' if caption else ''))
    png = (plot_pareto if structured else plot)(rows, save_dir / 'comparison.png')
    return {'csv': write_csv(rows, save_dir / 'comparison.csv'), 'md': md, 'png': png}


def unique_stems(files: list[Path]) -> list[str]:
    """Names for the output files of each input checkpoint: its stem, or where stems repeat (two runs' best.pt) the
    run folder too ('dns70-best' for runs/train/dns70/weights/best.pt), then a position suffix if still equal."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    named = []
    for f in files:
        run = f.parent.parent if f.parent.name == 'weights' else f.parent
        named.append(f'{run.name}-{f.stem}' if run.name else f.stem)
    return named if len(set(named)) == len(named) else [f'{n}-{i}' for i, n in enumerate(named)]
