"""The deployment ladder on the embedded set: dense -> channel-pruned + fine-tuned -> + INT8, accuracy and latency.

Usage (the trained runs: docs/export.md has the train.py commands):
    python benchmarks/deploy_ladder.py --dense data/weights/yolov5n-shapes.pt \\
        --rows 'half FLOPs=runs/train/r16g45-s0/weights/last.pt,runs/train/r16g45-s1/weights/last.pt,...' \\
               'third of the FLOPs=runs/train/r16g65-s0/weights/last.pt,...'

For every weights file: mAP50 and mAP50-95 of the .pt (PyTorch), and of its FP32 and INT8 ONNX exports (export.py
--int8 at --img, calibrated on the train split), means and standard deviations over the files of a row (seeds); file
sizes; params and GFLOPs at 640. Latency: benchmarks/int8_bench.py's interleaved timing of the first file of each row
(ONNX Runtime FP32 and INT8, and PyTorch dense FP32) at --shapes. Writes deploy_ladder.md, .csv and .png into
--project/--name (mAP50-95 against batch-1 latency).
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
from benchmarks.int8_bench import parse_shape  # noqa: E402
from benchmarks.int8_bench import run as time_ladder  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from utils.general import increment_path  # noqa: E402
from utils.torch_utils import model_flops  # noqa: E402


def evaluate(weights: Path, data: str, imgsz: int, calib_images: int, out: Path) -> dict[str, float]:
    """mAP50 / mAP50-95 of the .pt and of its FP32 and INT8 ONNX files, sizes (MB), params and GFLOPs@640."""
    w = out / 'weights' / f'{weights.parent.parent.name}-{weights.stem}.pt'  # run folder name: unique per seed
    w.parent.mkdir(parents=True, exist_ok=True)
    w.write_bytes(weights.read_bytes())
    fp32, int8 = [Path(f) for f in export.run(data=data, weights=w, imgsz=imgsz, int8=True,
                                              calib_images=calib_images)]
    r = {}
    for key, f in (('pt', w), ('fp32', fp32), ('int8', int8)):
        (_, _, map50, map_, *_), _, _ = val.run(data=data, weights=str(f), imgsz=imgsz, batch_size=1 if key != 'pt'
                                                else 32, workers=0, plots=False, project=out / 'val', name=key)
        r.update({f'{key}_map50': map50, f'{key}_map': map_, f'{key}_mb': f.stat().st_size / 1e6})
    m = attempt_load(w)
    r.update(params=sum(p.numel() for p in m.parameters()), gflops=model_flops(m, 640))
    return r


def summarize(values: list[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dense', type=Path, default=ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt')
    p.add_argument('--rows', nargs='*', default=[], help="'NAME=w1.pt,w2.pt,...' (one file per seed)")
    p.add_argument('--data', default=str(ROOT / 'data' / 'shapes.yaml'))
    p.add_argument('--img', type=int, default=256, help='evaluation and export size, pixels')
    p.add_argument('--calib-images', type=int, default=128)
    p.add_argument('--shapes', nargs='+', type=parse_shape, default=[(1, 640), (32, 256)], help='latency BATCHxSIZE')
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--project', type=Path, default=ROOT / 'runs' / 'val')
    p.add_argument('--name', default='deploy-ladder')
    opt = p.parse_args()
    out = increment_path(opt.project / opt.name)
    rows = {'dense': [opt.dense]}
    for spec in opt.rows:
        name, _, files = spec.partition('=')
        rows[name] = [Path(f) for f in files.split(',') if f]
    results = {name: [evaluate(w, opt.data, opt.img, opt.calib_images, out) for w in files]
               for name, files in rows.items()}
    firsts = [files[0] for files in rows.values()]
    timing = time_ladder(None, [str(f) for f in firsts], [], opt.shapes, opt.repeats, 32, names=list(rows)[1:])
    lat = {(t['variant'], t['precision'], t['batch'], t['imgsz']): t for t in timing}

    head = ['row', 'seeds', 'params', 'GFLOPs@640', 'runtime', 'file MB', 'mAP50', 'mAP50-95',
            *[f'ms/img {b}x{s}' for b, s in opt.shapes], *[f'x dense FP32 ORT {b}x{s}' for b, s in opt.shapes]]
    table, csv_rows = [head], []
    for name, rs in results.items():
        for key, runtime in (('pt', 'FP32 torch'), ('fp32', 'FP32 ORT'), ('int8', 'INT8 ORT')):
            t = [lat.get((name, runtime, b, s)) for b, s in opt.shapes]
            line = [name, str(len(rs)), f"{rs[0]['params']:,}", f"{rs[0]['gflops']:.2f}", runtime,
                    f"{rs[0][f'{key}_mb']:.2f}", summarize([r[f'{key}_map50'] for r in rs]),
                    summarize([r[f'{key}_map'] for r in rs]),
                    *[f"{x['ms']:.2f}" if x else '-' for x in t], *[f"{x['vs_ort']:.2f}x" if x else '-' for x in t]]
            table.append(line)
            csv_rows.append(dict(zip(head, line)))
    md = '\n'.join('| ' + ' | '.join(r) + ' |' for r in [table[0], ['---'] * len(head), *table[1:]])
    print(md)
    (out / 'deploy_ladder.md').write_text(md + '\n')
    with open(out / 'deploy_ladder.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        w.writerows(csv_rows)
    plot(results, lat, opt.shapes[0], out / 'deploy_ladder.png')
    print(f'saved to {out}')


def plot(results: dict, lat: dict, shape: tuple[int, int], file: Path) -> None:
    """mAP50-95 (mean, with the seeds' std as error bars) against ms/img at ``shape``, one marker per runtime."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), tight_layout=True)
    ax = fig.subplots()
    for key, runtime, marker in (('pt', 'FP32 torch', 's'), ('fp32', 'FP32 ORT', 'o'), ('int8', 'INT8 ORT', '^')):
        xs, ys, es, names = [], [], [], []
        for name, rs in results.items():
            t = lat.get((name, runtime, *shape))
            if t:
                v = [r[f'{key}_map'] for r in rs]
                xs.append(t['ms']), ys.append(statistics.mean(v))
                es.append(statistics.stdev(v) if len(v) > 1 else 0), names.append(name)
        ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=3, label=runtime)
        for x, y, n in zip(xs, ys, names):
            ax.annotate(n, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f'ms per image, batch {shape[0]} at {shape[1]} px (CPU)')
    ax.set_ylabel('mAP50-95 (embedded set)')
    ax.set_xscale('log')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(file, dpi=150)


if __name__ == '__main__':
    main()
