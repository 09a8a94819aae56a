"""The deployment ladder on the embedded set: dense -> channel-pruned -> + fine-tuned -> + INT8, accuracy and latency.

Usage (the trained runs: docs/export.md has the train.py commands; `python compare.py --deploy ...` runs the same):
    python benchmarks/deploy_ladder.py --dense data/weights/yolov5n-shapes.pt --oneshot 0.5 \\
        --rows 'half FLOPs=runs/train/r16g45-s0/weights/last.pt,runs/train/r16g45-s1/weights/last.pt,...' \\
               'third of the FLOPs=runs/train/r16g65-s0/weights/last.pt,...' --openvino

Rows: the dense model; with --oneshot F, the dense model channel-pruned to F of its FLOPs (global scope, widths rounded
to --round), not fine-tuned; then each --rows entry (one weights file per seed). For every weights file: mAP50 and
mAP50-95 of the .pt (PyTorch) and of its FP32 and INT8 ONNX exports (export.py --int8 at --img, calibrated on the
train split), and with --openvino (optional openvino + nncf) of its OpenVINO folder at OpenVINO's default precision
(BF16 on CPUs with AMX/AVX512-BF16) and of its INT8 OpenVINO folder (export.py --include openvino --int8); means and
standard deviations over the files of a row (seeds); file sizes; params and GFLOPs at 640. Latency:
benchmarks/int8_bench.py's interleaved timing of the first file of each row at --shapes (FP32 OpenVINO is timed, with
the f32 precision hint, but not evaluated: its arithmetic is the FP32 ONNX file's). Writes deploy_ladder.md, .csv
and .png into --project/--name (mAP50-95 against batch-1 latency).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import export  # noqa: E402
import val  # noqa: E402
from benchmarks.int8_bench import openvino_available, openvino_default, parse_shape  # noqa: E402
from benchmarks.int8_bench import run as time_ladder  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from utils.checkpoint import make_checkpoint, save  # noqa: E402
from utils.compression.channel.pruning import DEFAULT_IMPORTANCE, amount_for_flops, prune_channels  # noqa: E402
from utils.general import increment_path  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402

# (result key, runtime label in the table and in int8_bench's rows); 'ov' is relabelled with OpenVINO's default
RUNTIMES = (('pt', 'FP32 torch'), ('fp32', 'FP32 ORT'), ('int8', 'INT8 ORT'), ('ov', 'OpenVINO default'),
            ('ov_fp32', 'FP32 OpenVINO'), ('ov_int8', 'INT8 OpenVINO'))


def oneshot(dense: Path, flops: float, round_to: int, out: Path) -> Path:
    """The dense checkpoint channel-pruned to ``flops`` of its FLOPs (global scope, DEFAULT_IMPORTANCE, widths rounded
    to ``round_to``), not fine-tuned, saved as an upstream-style checkpoint in ``out``/weights."""
    model = attempt_load(dense, fuse=False).float()
    amount = amount_for_flops(model, flops, 'global', DEFAULT_IMPORTANCE, round_to=round_to)
    prune_channels(model, amount, 'global', DEFAULT_IMPORTANCE, round_to=round_to)
    f = out / 'weights' / f'oneshot{flops:g}.pt'
    f.parent.mkdir(parents=True, exist_ok=True)
    save(make_checkpoint(model), f)
    return f


def evaluate(weights: Path, data: str, imgsz: int, calib_images: int, out: Path, openvino: bool) -> dict[str, float]:
    """mAP50 / mAP50-95 and file size (MB) of the .pt and of each of its exports, params and GFLOPs@640."""
    w = out / 'weights' / f'{weights.parent.parent.name}-{weights.stem}.pt'  # run folder name: unique per seed
    w.parent.mkdir(parents=True, exist_ok=True)
    if w != weights:
        w.write_bytes(weights.read_bytes())
    files = export.run(data=data, weights=w, imgsz=imgsz, int8=True, calib_images=calib_images,
                       include=['onnx', 'openvino'] if openvino else ['onnx'])  # .onnx, -int8.onnx[, int8 folder]
    files = dict(zip(('fp32', 'int8', 'ov_int8'), map(Path, files)))
    if openvino:  # the FP32 folder too (OpenVINO runs it at its default precision)
        files['ov'] = Path(export.run(weights=w, imgsz=imgsz, include=['openvino'])[-1])
    files['pt'] = w
    r = {}
    for key, f in files.items():
        (_, _, map50, map_, *_), _, _ = val.run(data=data, weights=str(f), imgsz=imgsz, batch_size=1 if key != 'pt'
                                                else 32, workers=0, plots=False, project=out / 'val', name=key)
        size = sum(x.stat().st_size for x in f.iterdir() if x.suffix == '.bin') if f.is_dir() else f.stat().st_size
        r.update({f'{key}_map50': map50, f'{key}_map': map_, f'{key}_mb': size / 1e6})
    m = attempt_load(w)
    r.update(params=sum(p.numel() for p in m.parameters()), gflops=model_flops(m, 640))
    return r


def summarize(values: list[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def run(dense: Path, rows: dict[str, list[Path]], data: str, imgsz: int = 256, calib_images: int = 128,
        shapes: tuple[tuple[int, int], ...] = ((1, 640), (32, 256)), repeats: int = 10, oneshots: tuple = (),
        round_to: int = 16, openvino: bool = False, out: Path = ROOT / 'runs' / 'val' / 'deploy-ladder') -> Path:
    """Evaluate and time the ladder; write deploy_ladder.md/.csv/.png into ``out`` (returned)."""
    out = increment_path(out)
    if openvino and not openvino_available():
        print('openvino / nncf not installed (pip install openvino nncf): no OpenVINO rows')
        openvino = False
    ladder = {'dense': [Path(dense)]}
    ladder.update({f'one-shot {f:g} FLOPs': [oneshot(Path(dense), f, round_to, out)] for f in oneshots})
    ladder.update(rows)
    firsts = [files[0] for files in ladder.values()]
    # timing first, before the evaluations load dozens of models into this process (the ladder timed after them
    # measured the same within a few per cent, but a process holding fewer OpenVINO models times some of them
    # faster: docs/export.md, the deployment ladder)
    timing = time_ladder(None, [str(f) for f in firsts], [], list(shapes), repeats, 32, names=list(ladder)[1:],
                         openvino=openvino)
    results = {name: [evaluate(w, data, imgsz, calib_images, out, openvino) for w in files]
               for name, files in ladder.items()}
    default = openvino_default() if openvino else ''
    labels = {k: (f'{default} OpenVINO' if k == 'ov' else v) for k, v in RUNTIMES}
    runtimes = [k for k, _ in RUNTIMES if openvino or not k.startswith('ov')]
    if default == 'FP32':  # OpenVINO's default is FP32 on this CPU: one row
        runtimes.remove('ov_fp32')
    lat = {(t['variant'], t['precision'], t['batch'], t['imgsz']): t for t in timing}

    head = ['row', 'seeds', 'params', 'GFLOPs@640', 'runtime', 'file MB', 'mAP50', 'mAP50-95',
            *[f'ms/img {b}x{s}' for b, s in shapes], *[f'x dense FP32 ORT {b}x{s}' for b, s in shapes],
            *[f'x dense FP32 torch {b}x{s}' for b, s in shapes]]
    table = [head]
    for name, rs in results.items():
        for key in runtimes:
            t = [lat.get((name, labels[key], b, s)) for b, s in shapes]
            evaluated = f'{key}_map' in rs[0]
            line = [name, str(len(rs)), f"{rs[0]['params']:,}", f"{rs[0]['gflops']:.2f}", labels[key],
                    f"{rs[0][f'{key}_mb']:.2f}" if evaluated else '-',
                    summarize([r[f'{key}_map50'] for r in rs]) if evaluated else '-',
                    summarize([r[f'{key}_map'] for r in rs]) if evaluated else '-',
                    *[f"{x['ms']:.2f}" if x else '-' for x in t], *[f"{x['vs_ort']:.2f}x" if x else '-' for x in t],
                    *[f"{x['vs_torch']:.2f}x" if x else '-' for x in t]]
            table.append(line)
    md = '\n'.join('| ' + ' | '.join(r) + ' |' for r in [table[0], ['---'] * len(head), *table[1:]])
    print(md)
    (out / 'deploy_ladder.md').write_text(md + '\n')
    with open(out / 'deploy_ladder.csv', 'w', newline='') as f:
        csv.writer(f).writerows(table)
    plot(results, lat, shapes[0], [(k, labels[k]) for k in runtimes], out / 'deploy_ladder.png')
    print(f'saved to {out}')
    return out


def plot(results: dict, lat: dict, shape: tuple[int, int], runtimes: list[tuple[str, str]], file: Path) -> None:
    """mAP50-95 (mean, with the seeds' std as error bars) against ms/img at ``shape``: colour = row, marker = runtime.
    Rows far below the best (e.g. one-shot pruned, not fine-tuned) would squash the axis: they are named in a note."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    best = max(statistics.mean(r[f'{k}_map'] for r in rs) for rs in results.values() for k, _ in runtimes
               if f'{k}_map' in rs[0])
    fig = Figure(figsize=(7.5, 4.8), tight_layout=True)
    ax = fig.subplots()
    colors, off, shown, used = {}, {}, [], []
    for i, (name, rs) in enumerate(results.items()):
        colors[name] = f'C{i}'
        for (key, runtime), marker in zip(runtimes, 'so^Dvx'):
            t = lat.get((name, runtime, *shape))
            if not t or f'{key}_map' not in rs[0]:
                continue
            v = [r[f'{key}_map'] for r in rs]
            if statistics.mean(v) < 0.5 * best:
                off.setdefault(name, []).append(statistics.mean(v))
                continue
            shown += [name] * (name not in shown)
            used += [(runtime, marker)] * ((runtime, marker) not in used)
            ax.errorbar(t['ms'], statistics.mean(v), yerr=statistics.stdev(v) if len(v) > 1 else 0, fmt=marker,
                        color=colors[name], capsize=3, markersize=7)
    legend = ax.legend([Line2D([], [], color=colors[n], lw=6) for n in shown], shown, loc='lower left', fontsize=8)
    ax.add_artist(legend)
    ax.legend([Line2D([], [], color='k', marker=m, ls='') for _, m in used], [rt for rt, _ in used],
              loc='lower right', fontsize=8)
    if off:
        ax.set_title('not shown, far below: ' + '; '.join(f'{n} (mAP50-95 {min(v):.3f}-{max(v):.3f})'
                                                          for n, v in off.items()), fontsize=8)
    ax.set_xlabel(f'ms per image, batch {shape[0]} at {shape[1]} px (CPU)')
    ax.set_ylabel('mAP50-95 (embedded set)')
    ax.set_xscale('log')
    ax.grid(alpha=0.3, which='both')
    fig.savefig(file, dpi=150)


def parse_rows(specs: list[str]) -> dict[str, list[Path]]:
    """'NAME=w1.pt,w2.pt' entries -> {NAME: [w1.pt, w2.pt]}; ValueError (one line) for a bad entry or a missing file."""
    rows = {}
    for spec in specs:
        name, sep, files = spec.partition('=')
        ws = [Path(f) for f in files.split(',') if f]
        if not sep or not name or not ws:
            raise ValueError(f"--rows entries look like 'NAME=w1.pt,w2.pt', got {spec!r}")
        missing = [w for w in ws if not w.is_file()]
        if missing:
            raise ValueError(f'{name}: weights file not found: {missing[0]}')
        rows[name] = ws
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dense', type=Path, default=ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt')
    p.add_argument('--rows', nargs='*', default=[], help="'NAME=w1.pt,w2.pt,...' (one file per seed)")
    p.add_argument('--oneshot', nargs='*', type=float, default=[], metavar='F',
                   help='also the dense model channel-pruned to F of its FLOPs, not fine-tuned')
    p.add_argument('--round', type=int, default=16, help='--oneshot: kept widths rounded to this multiple')
    p.add_argument('--data', default=str(ROOT / 'data' / 'shapes.yaml'))
    p.add_argument('--img', type=int, default=256, help='evaluation and export size, pixels')
    p.add_argument('--calib-images', type=int, default=128)
    p.add_argument('--shapes', nargs='+', type=parse_shape, default=[(1, 640), (32, 256)], help='latency BATCHxSIZE')
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--openvino', action='store_true', help='OpenVINO rows (optional: pip install openvino nncf)')
    p.add_argument('--project', type=Path, default=ROOT / 'runs' / 'val')
    p.add_argument('--name', default='deploy-ladder')
    opt = p.parse_args()
    try:
        rows = parse_rows(opt.rows)
    except ValueError as e:
        raise SystemExit(f'ERROR: {e}') from None
    run(opt.dense, rows, opt.data, opt.img, opt.calib_images, tuple(opt.shapes), opt.repeats, tuple(opt.oneshot),
        opt.round, opt.openvino, opt.project / opt.name)


if __name__ == '__main__':
    main()
