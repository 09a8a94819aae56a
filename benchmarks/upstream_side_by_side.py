"""Channel-pruned checkpoints of this project, evaluated by our val.py and by upstream YOLOv5 v7.0's val.py unchanged.

Usage: python benchmarks/upstream_side_by_side.py --upstream /path/to/yolov5-v7.0 --python /path/to/venv/bin/python
           [--weights data/weights/yolov5n-shapes.pt] [--amount 0.3] [--dns-epochs 1 | --dns-weights best.pt]
           [--out runs/upstream-check] [--img 256] [--batch-size 1] [--tol 0.002] [--only control dns ...]

Needs an upstream v7.0 source tree (e.g. `git archive v7.0` of ultralytics/yolov5) and a Python that has torch plus
upstream's extra requirements (gitpython, ipython, psutil, thop, seaborn, requests, setuptools<81), run with
../shared/upstream-compat on PYTHONPATH (see its README). Nothing is downloaded; without the tree or those packages the
script prints SKIP and exits 0.

Checkpoints (upstream's dict layout, FP16, written by utils.checkpoint.make_checkpoint + save):
- control: --weights itself (unpruned);
- layer-l1: prune_channels(model, amount) (layer scope, L1 importance);
- global-bn-r8: prune_channels(model, amount, scope='global', importance='bn', round_to=8);
- dns: train.py --dns --dns-granularity channel --target-sparsity amount for --dns-epochs (its physically shrunk
  best.pt), or --dns-weights; --dns-epochs 0 without --dns-weights skips it.

Upstream reads a copy of the embedded data set (images hard-linked where possible, labels copied), so its pickled
label caches never land in this project's datasets/ folder. Printed per checkpoint and side: P, R, mAP50, mAP50-95,
the model summary line (layers, parameters, GFLOPs), and whether upstream's NMS time limit (0.5 + 0.05 * batch s)
cut a batch short — upstream then drops the rest of that batch's detections, so its mAP is not comparable (a
timing effect, not the file). On a busy 2-core CPU a batch of 32 needs more than its 2.1 s even for the unpruned
model, hence the default --batch-size 1 on both sides (upstream stores an image's boxes before it checks the limit,
so at batch 1 a warning drops nothing); for a set of equal-size images the batch
size does not change the letterboxed inputs, so it does not change the metrics.
Also printed: the largest |difference| between the raw predictions (fused model, 8 val images) of our loader and
upstream's attempt_load on the same file, and whether upstream's detect.py runs on each pruned checkpoint.
Exit status 1 when a checkpoint fails to load in upstream or a comparable mAP differs by more than --tol.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT.parent / 'shared' / 'upstream-compat'
CHECKPOINTS = ('control', 'layer-l1', 'global-bn-r8', 'dns')
UPSTREAM_EXTRAS = ('git', 'IPython', 'psutil', 'thop', 'seaborn', 'requests', 'pkg_resources', 'torch', 'cv2')
METRIC_RE = re.compile(r'^\s*all\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$', re.M)
SUMMARY_RE = re.compile(r'(\S+ summary: [^\n]*GFLOPs)')

# Forward pass of the fused model on the first 8 val images (RGB, /255, 256 px), run in either code base's cwd.
RAW_SNIPPET = '''
import glob, sys, cv2, numpy as np, torch
sys.path.insert(0, '.')
from models.experimental import attempt_load
w, images, out, img = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
files = sorted(glob.glob(images + '/*.jpg'))[:8]
x = np.stack([cv2.resize(cv2.imread(f), (img, img))[:, :, ::-1].transpose(2, 0, 1) for f in files])
x = torch.from_numpy(np.ascontiguousarray(x)).float() / 255
model = attempt_load(w, device='cpu', fuse=True)
with torch.no_grad():
    torch.save(model(x)[0], out)
'''


def skip_reason(upstream: Path, python: str, compat: Path) -> str | None:
    """Why the side-by-side cannot run here (None when it can)."""
    if not (upstream / 'val.py').is_file() or not (upstream / 'models' / 'yolo.py').is_file():
        return f'no upstream YOLOv5 source tree at {upstream} (val.py, models/yolo.py)'
    if not (compat / 'sitecustomize.py').is_file():
        return f'no upstream-compat shims at {compat} (sitecustomize.py); pass --compat'
    r = subprocess.run([python, '-c', f"import {', '.join(UPSTREAM_EXTRAS)}"], capture_output=True, text=True,
                       env=upstream_env(compat))
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ['?'])[-1]
        return (f'{python} lacks upstream requirements ({last}); make a venv with --system-site-packages and '
                'pip install gitpython ipython psutil thop seaborn requests "setuptools<81"')
    return None


def upstream_env(compat: Path) -> dict[str, str]:
    """Environment for upstream: compat shims on PYTHONPATH, torch's pre-2.6 (pickle) loading allowed."""
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1', PYTHONPATH=str(compat))
    env.pop('PYTHONHOME', None)
    return env


def link_or_copy_tree(src: Path, dst: Path, link: bool) -> None:
    """Mirror folder src at dst: hard links when ``link`` (same file system), else copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            if link:
                try:
                    os.link(f, dst / f.name)
                    continue
                except OSError:
                    pass
            shutil.copy2(f, dst / f.name)


def upstream_dataset(data: Path, out: Path) -> Path:
    """A data yaml for upstream over a private copy of our data set (so upstream's .cache files stay there)."""
    import yaml

    from utils.data_yaml import check_dataset

    d = check_dataset(data)  # generates the embedded set when missing; absolute paths
    root = out / 'dataset'
    cfg = {'path': str(root), 'names': d['names']}
    for split in ('train', 'val'):
        src = Path(d[split] if isinstance(d[split], str) else d[split][0])
        if src.name == '' or not src.is_dir() or 'images' not in src.parts:
            raise SystemExit(f'{data}: {split} must be an images/ folder with a labels/ sibling, got {src}')
        labels = Path(str(src).replace(f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'))
        link_or_copy_tree(src, root / 'images' / split, link=True)
        link_or_copy_tree(labels, root / 'labels' / split, link=False)  # upstream writes labels/<split>.cache
        cfg[split] = f'images/{split}'
    f = out / 'upstream_data.yaml'
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f


def make_pruned(weights: Path, amount: float, out: Path) -> dict[str, Path]:
    """One-shot channel-pruned checkpoints written with our code, in upstream's layout."""
    from models.experimental import attempt_load
    from utils.checkpoint import make_checkpoint, save
    from utils.compression.channel.pruning import prune_channels

    base = attempt_load(weights, fuse=False)
    made = {}
    for name, kw in (('layer-l1', {}), ('global-bn-r8', {'scope': 'global', 'importance': 'bn', 'round_to': 8})):
        m = deepcopy(base)
        print(f'{name}: {prune_channels(m, amount, **kw)}')
        made[name] = out / f'{name}.pt'
        save(make_checkpoint(m), made[name])
    return made


def train_dns(weights: Path, data: Path, amount: float, epochs: int, img: int, batch: int, out: Path) -> Path:
    """Channel-DNS fine-tune with our train.py; returns its (physically shrunk) best.pt."""
    cmd = [sys.executable, 'train.py', '--weights', str(weights), '--data', str(data), '--dns', '--dns-granularity',
           'channel', '--target-sparsity', str(amount), '--epochs', str(epochs), '--img', str(img), '--batch-size',
           str(batch), '--workers', '1', '--project', str(out), '--name', 'dns', '--exist-ok']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    best = out / 'dns' / 'weights' / 'best.pt'
    if r.returncode or not best.is_file():
        raise SystemExit(f'channel-DNS training failed (rc {r.returncode}):\n{r.stderr[-3000:]}')
    return best


def parse_val(log: str) -> dict:
    """P, R, mAP50, mAP50-95 of the 'all' row, the summary line and NMS time-limit warnings of a val.py log."""
    m = METRIC_RE.findall(log)
    s = SUMMARY_RE.findall(log)
    res = {'summary': s[-1] if s else '?', 'nms_limit': log.count('NMS time limit')}
    if m:
        res.update(zip(('P', 'R', 'mAP50', 'mAP50-95'), map(float, m[-1][2:])))
    return res


def run_val(python: str, cwd: Path, env: dict | None, weights: Path, data: Path, img: int, batch: int, project: Path,
            name: str) -> dict:
    """One val.py run (ours or upstream's, by cwd); parsed numbers plus rc and the log tail on failure."""
    cmd = [python, 'val.py', '--weights', str(weights), '--data', str(data), '--img', str(img), '--batch-size',
           str(batch), '--workers', '1', '--project', str(project), '--name', name, '--exist-ok']
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    res = parse_val(r.stdout + r.stderr)
    res['rc'] = r.returncode
    if r.returncode or 'mAP50' not in res:
        res['error'] = (r.stdout + r.stderr)[-2000:]
    return res


def raw_outputs(python: str, cwd: Path, env: dict | None, weights: Path, images: Path, img: int, out: Path):
    """Predictions (8, N, 5 + nc) of the fused model, or the error text."""
    import torch

    r = subprocess.run([python, '-c', RAW_SNIPPET, str(weights), str(images), str(out), str(img)], cwd=cwd, env=env,
                       capture_output=True, text=True)
    return torch.load(out) if r.returncode == 0 and out.is_file() else (r.stderr[-2000:] or f'rc {r.returncode}')


def run_detect(python: str, upstream: Path, env: dict, weights: Path, images: Path, img: int, project: Path,
               name: str) -> str:
    """Upstream detect.py on 4 images: 'ok (n images saved)' or the failure."""
    src = project / 'detect_src'
    src.mkdir(parents=True, exist_ok=True)
    for f in sorted(images.glob('*.jpg'))[:4]:
        if not (src / f.name).exists():
            shutil.copy2(f, src / f.name)
    cmd = [python, 'detect.py', '--weights', str(weights), '--source', str(src), '--img', str(img), '--project',
           str(project), '--name', name, '--exist-ok']
    r = subprocess.run(cmd, cwd=upstream, env=env, capture_output=True, text=True)
    saved = len(list((project / name).glob('*.jpg')))
    return f'ok ({saved} images saved)' if r.returncode == 0 and saved else f'FAILED rc {r.returncode}: {r.stderr[-800:]}'


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--upstream', type=Path, required=True, help='upstream YOLOv5 v7.0 source tree')
    p.add_argument('--python', default=sys.executable, help='Python with upstream requirements (a venv)')
    p.add_argument('--compat', type=Path, default=COMPAT, help='folder with the upstream-compat sitecustomize.py')
    p.add_argument('--weights', type=Path, default=ROOT / 'data/weights/yolov5n-shapes.pt', help='unpruned model')
    p.add_argument('--data', type=Path, default=ROOT / 'data/shapes.yaml', help='dataset.yaml (images/ + labels/)')
    p.add_argument('--amount', type=float, default=0.3, help='fraction of prunable channels to remove')
    p.add_argument('--dns-epochs', type=int, default=1, help='channel-DNS fine-tune epochs (0 = no DNS checkpoint)')
    p.add_argument('--dns-weights', type=Path, default=None, help='use this channel-DNS best.pt instead of training')
    p.add_argument('--img', type=int, default=256, help='inference size (pixels)')
    p.add_argument('--batch-size', type=int, default=1, help='val batch size, both sides (see the NMS time limit)')
    p.add_argument('--only', nargs='+', default=None, choices=CHECKPOINTS, help='compare only these checkpoints')
    p.add_argument('--tol', type=float, default=0.002, help='allowed |ours - upstream| for mAP50 and mAP50-95')
    p.add_argument('--out', type=Path, default=ROOT / 'runs/upstream-check', help='output folder')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> int:
    upstream, out = opt.upstream.resolve(), opt.out.resolve()
    reason = skip_reason(upstream, opt.python, opt.compat.resolve())
    if reason:
        print(f'SKIP: {reason}')
        return 0
    sys.path.insert(0, str(ROOT))
    out.mkdir(parents=True, exist_ok=True)
    env = upstream_env(opt.compat.resolve())
    up_data = upstream_dataset(opt.data, out)
    up_images = out / 'dataset' / 'images' / 'val'

    ckpts = {'control': opt.weights.resolve(), **make_pruned(opt.weights.resolve(), opt.amount, out)}
    if opt.dns_weights:
        ckpts['dns'] = opt.dns_weights.resolve()
    elif opt.dns_epochs > 0:
        ckpts['dns'] = train_dns(opt.weights.resolve(), opt.data.resolve(), opt.amount, opt.dns_epochs, opt.img, 16, out)

    if opt.only:
        ckpts = {k: v for k, v in ckpts.items() if k in opt.only}
    failed = False
    rows = []
    for name, w in ckpts.items():
        print(f'\n== {name}: {w}')
        ours = run_val(sys.executable, ROOT, None, w, opt.data.resolve(), opt.img, opt.batch_size, out / 'val_ours', name)
        up = run_val(opt.python, upstream, env, w, up_data, opt.img, opt.batch_size, out / 'val_upstream', name)
        a = raw_outputs(sys.executable, ROOT, None, w, up_images, opt.img, out / f'{name}.ours.pt')
        b = raw_outputs(opt.python, upstream, env, w, up_images, opt.img, out / f'{name}.upstream.pt')
        if isinstance(a, str) or isinstance(b, str):
            raw = 'FAILED: ' + (a if isinstance(a, str) else b)
        elif a.shape != b.shape:
            raw = f'shapes differ {tuple(a.shape)} vs {tuple(b.shape)}'
        else:
            raw = f'max |diff| {float((a - b).abs().max()):.3g} over {tuple(a.shape)}'
        det = run_detect(opt.python, upstream, env, w, up_images, opt.img, out / 'detect_upstream', name) \
            if name != 'control' else '-'
        for side, r in (('ours', ours), ('upstream', up)):
            print(f"{side:>9}: {r['summary']}" + (f"  [{r['nms_limit']} NMS time-limit warnings]" if r['nms_limit'] else ''))
            if 'error' in r:
                print(f'{side} val.py FAILED (rc {r["rc"]}):\n{r["error"]}')
        print(f'raw predictions ours vs upstream: {raw}\nupstream detect.py: {det}')
        if 'error' in up or raw.startswith(('FAILED', 'shapes')) or det.startswith('FAILED'):
            failed = True
        rows.append((name, ours, up))

    print(f"\n{'checkpoint':<14}{'side':<10}{'P':>8}{'R':>8}{'mAP50':>8}{'mAP50-95':>10}  verdict")
    for name, ours, up in rows:
        if 'mAP50' in ours and 'mAP50' in up:
            d = max(abs(ours[k] - up[k]) for k in ('mAP50', 'mAP50-95'))
            if up['nms_limit'] and opt.batch_size > 1:  # at batch 1 the image is kept before the limit check
                verdict = f'not comparable: upstream NMS time limit hit {up["nms_limit"]}x (max |d| {d:.4f})'
            else:
                verdict = f"{'same' if d <= opt.tol else 'DIFFERENT'} (max |d mAP| {d:.4f}, tol {opt.tol})"
                failed |= d > opt.tol
        else:
            verdict = 'FAILED'
            failed = True
        for side, r in (('ours', ours), ('upstream', up)):
            nums = ''.join(f"{r.get(k, float('nan')):>{w}.4f}" for k, w in (('P', 8), ('R', 8), ('mAP50', 8),
                                                                            ('mAP50-95', 10)))
            print(f"{name if side == 'ours' else '':<14}{side:<10}{nums}  {verdict if side == 'upstream' else ''}")
    return int(failed)


if __name__ == '__main__':
    sys.exit(main(parse_opt()))
