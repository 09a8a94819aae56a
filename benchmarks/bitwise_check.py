"""Same seed, same bits: run val and short training jobs in this checkout and in a reference checkout, compare.

Usage:
    git worktree add /tmp/base <commit>                      # the code to compare against
    python benchmarks/bitwise_check.py --ref /tmp/base       # ~10 min on 2 CPU cores

Each job runs as a subprocess in both checkouts with the same arguments and seed (outputs under
runs/bitwise/{ours,ref}/). Compared bit for bit: the shipped model's val metrics line, every results.csv (all
columns), and every tensor of each last.pt (model, EMA, optimizer, 'dns' and 'share' states) plus its scalars.
The jobs cover weight DNS, channel DNS, network slimming and weight sharing (on the weight-DNS result).
Both checkpoints are read with this checkout's loader, which must read the reference's files anyway.
Prints one line per job ('identical' or the first differences) and exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.checkpoint import load  # noqa: E402

W = 'data/weights/yolov5n-shapes.pt'
COMMON = ['--img', '128', '--batch-size', '16', '--workers', '0', '--seed', '0', '--noplots', '--exist-ok']
# (name, script, arguments); '{out}' is the checkout's output folder
JOBS = [
    ('val', 'val.py', ['--weights', W, '--img', '256', '--batch-size', '32', '--workers', '0',
                       '--project', '{out}', '--name', 'val', '--exist-ok']),
    ('dns', 'train.py', ['--weights', W, '--dns', '--target-sparsity', '0.5', '--epochs', '2',
                         '--project', '{out}', '--name', 'dns', *COMMON]),
    ('channel-dns', 'train.py', ['--weights', W, '--dns', '--dns-granularity', 'channel', '--target-sparsity', '0.3',
                                 '--epochs', '2', '--project', '{out}', '--name', 'channel-dns', *COMMON]),
    ('slim', 'train.py', ['--weights', W, '--slim', '1e-3', '--epochs', '1', '--project', '{out}', '--name', 'slim',
                          *COMMON]),
    ('share', 'train.py', ['--weights', '{out}/dns/weights/last.pt', '--share-bits', '4', '--epochs', '1',
                           '--project', '{out}', '--name', 'share', *COMMON]),
]
METRICS = re.compile(r'^\s*all\s+\d+\s+\d+(\s+[\d.]+){4}\s*$', re.M)


def run_job(checkout: Path, out: Path, name: str, script: str, args: list[str], reuse: bool = False) -> str:
    """Run ``script`` in ``checkout`` with ``args``; returns its combined output, also kept in out/name.log.

    With ``reuse``, a log from an earlier run of the same job is returned instead (the reference side
    need not be re-run while iterating on this checkout). A non-zero exit ends the check with its output.
    """
    log = out / f'{name}.log'
    if reuse and log.is_file():
        return log.read_text()
    cmd = [sys.executable, script, *(a.replace('{out}', str(out)) for a in args)]
    p = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f'{checkout}: {" ".join(cmd)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}')
    out.mkdir(parents=True, exist_ok=True)
    log.write_text(p.stdout + p.stderr)
    return p.stdout + p.stderr


def diff(a: Any, b: Any, path: str = '') -> list[str]:
    """Paths at which two checkpoint values differ (tensors bitwise, modules by state_dict, containers by key)."""
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        return diff(a.state_dict(), b.state_dict(), path)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        out = [f'{path}/{k}' for k in keys if (k in a) != (k in b)]
        for k in sorted((k for k in keys if k in a and k in b), key=str):
            out += diff(a[k], b[k], f'{path}/{k}')
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{path} (length {len(a)} vs {len(b)})']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f'{path}[{i}]')]
    return [] if a == b else [path]


def compare_run(ours: Path, ref: Path) -> list[str]:
    """Differences between two run folders: results.csv bytes and last.pt contents (options and dates excepted)."""
    out = []
    if (ours / 'results.csv').read_bytes() != (ref / 'results.csv').read_bytes():
        out.append('results.csv')
    a, b = (load(d / 'weights' / 'last.pt') for d in (ours, ref))
    for k in ('opt', 'date', 'git'):  # paths and timestamps differ by construction
        a.pop(k, None), b.pop(k, None)
    return out + [f'last.pt{d}' for d in diff(a, b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--ref', type=Path, required=True, help='reference checkout (e.g. a git worktree of main)')
    ap.add_argument('--out', type=Path, default=ROOT / 'runs' / 'bitwise', help='output folder')
    ap.add_argument('--jobs', nargs='+', default=[j[0] for j in JOBS], help='subset of jobs to run')
    ap.add_argument('--reuse-ref', action='store_true', help="keep the reference's outputs from an earlier check")
    opt = ap.parse_args()
    shutil.rmtree(opt.out / 'ours', ignore_errors=True)
    if not opt.reuse_ref:
        shutil.rmtree(opt.out / 'ref', ignore_errors=True)
    failed = False
    for name, script, args in JOBS:
        if name not in opt.jobs:
            continue
        outs = {}
        for side, checkout in (('ours', ROOT), ('ref', opt.ref.resolve())):
            reuse = opt.reuse_ref and side == 'ref'
            outs[side] = run_job(checkout, opt.out.resolve() / side, name, script, args, reuse)
        if name == 'val':
            lines = [METRICS.search(o) for o in outs.values()]
            bad = [] if all(lines) and lines[0].group(0) == lines[1].group(0) else ['metrics line']
            detail = lines[0].group(0).strip() if lines[0] else 'no metrics line'
        else:
            bad = compare_run(opt.out / 'ours' / name, opt.out / 'ref' / name)
            detail = 'results.csv + last.pt'
        failed |= bool(bad)
        print(f"{name:12s} {'identical' if not bad else 'DIFFERENT: ' + ', '.join(bad[:8])}  ({detail})", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == '__main__':
    main()
