"""Corrupt data (issue 13): randomized label files and images are scanned without raising, each file is either
accepted with well-formed rows or counted as corrupt, val.py finishes on them, and a class id >= nc or a NaN
coordinate is skipped and counted by val.py and train.py (CLI runs on a tiny copy of the embedded set), also
with --single-cls; the label cache never keeps a verdict made under another nc or by laxer, older checks.

The randomized tests use a fixed seed; FUZZ_SEED and FUZZ_N (label files; FUZZ_N // 4 images) make a longer
run, e.g. ``FUZZ_SEED=1 FUZZ_N=4800 python -m pytest -q tests/test_corrupt_data.py -k random -s`` (the counts
are printed with -s).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import val
from tests.conftest import ROOT
from utils import labels as labels_mod
from utils.data_yaml import check_dataset
from utils.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.labels import img2label_paths

NC = 3
NAMES = {0: 'circle', 1: 'rectangle', 2: 'triangle'}
SEED = int(os.environ.get('FUZZ_SEED', '0'))
N_LABELS = int(os.environ.get('FUZZ_N', '240'))
N_IMAGES = max(N_LABELS // 4, 20)

# tokens that break a row, each for a reason the scan must catch
NON_FINITE = ('nan', 'NaN', '-nan', 'inf', '-inf', 'Infinity', '1e400', '-1e999')
OUT_OF_RANGE = ('1.01', '1.5', '2', '1e3', '1e10', '3.5e38', '1e39', '1e300', '-0.01', '-1', '-1e-3', '-1e10')
NOT_NUMBERS = ('abc', '0.5x', '\x00', '0,5', '½', '--1', '1e', 'None', '0x10', '#', '0.5.5')
BAD_CLASSES = ('-1', '0.5', '1.25', '1e39', '1e300', 'nan', '-inf', f'{NC}', f'{NC}.0')
ROW_FAULTS = ('columns', 'non_finite', 'out_of_range', 'class', 'not_number')
FILE_FAULTS = ('binary', 'binary_in_text', 'folder')
FILE_OK = ('missing', 'empty', 'blank')


# ---------------------------------------------------------------------------------------------- label generator
def _num(rng: np.random.Generator, x: float) -> str:
    """``x`` (at most 6 decimals) written one of the ways a label writer might; all parse back to exactly x."""
    return [f'{x:.6f}', f'{x:g}', f'{x:.6e}', repr(x)][rng.integers(4)]


def _valid_row(rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """Tokens of a good row (a box, or now and then a polygon) and the [cls xc yc w h] it must give."""
    c = int(rng.integers(NC))
    ct = [str(c), f'{c}.0', f'{c:.1e}'][rng.integers(3)]
    edge = rng.random() < 0.1  # exact 0 and 1 are allowed
    if rng.random() < 0.2:  # polygon "cls x1 y1 ... xk yk", k >= 3 -> its enclosing box
        xy = np.round(rng.random((int(rng.integers(3, 7)), 2)), 6)
        if edge:
            xy[0] = (0.0, 1.0)
        lo, hi = xy.min(0), xy.max(0)
        return [ct, *(_num(rng, float(v)) for v in xy.ravel())], [c, *((lo + hi) / 2), *(hi - lo)]
    v = [float(x) for x in np.round(rng.random(4), 6)]
    if edge:
        v[int(rng.integers(4))] = float(rng.integers(2))
    return [ct, *(_num(rng, x) for x in v)], [c, *v]


def _broken_row(rng: np.random.Generator, fault: str) -> list[str]:
    """Tokens of a row that makes its file corrupt, by ``fault`` (one of ROW_FAULTS)."""
    tokens, _ = _valid_row(rng)
    if fault == 'columns':  # 1-4 or an even number of values: neither a box nor a polygon
        k = int(rng.choice([1, 2, 3, 4, 6, 8, 10]))
        tokens = (tokens * 5)[:k]
    elif fault == 'non_finite':
        tokens[int(rng.integers(len(tokens)))] = str(rng.choice(NON_FINITE))
    elif fault == 'out_of_range':
        tokens[int(rng.integers(1, 5)) if len(tokens) == 5 else 1] = str(rng.choice(OUT_OF_RANGE))
        if len(tokens) > 5:  # polygon: a vertex far outside makes the box leave [0, 1] too
            tokens[1] = str(rng.choice(['5', '-5', '1e10', '-1e39', '1e39']))
    elif fault == 'class':
        tokens[0] = str(rng.choice([*BAD_CLASSES, str(int(rng.integers(NC, NC + 1000)))]))
    else:  # not_number
        tokens[int(rng.integers(len(tokens)))] = str(rng.choice(NOT_NUMBERS))
    return tokens


def _dedupe(rows: list[list[float]]) -> np.ndarray:
    out, seen = [], set()
    for r in rows:
        key = tuple(np.float32(r).tolist())
        if key not in seen:
            seen.add(key)
            out.append(r)
    return np.array(out, np.float64).reshape(-1, 5)


def make_label(rng: np.random.Generator, f: Path) -> tuple[str, np.ndarray | None]:
    """Write a random label file (or folder, or nothing) at ``f``; returns (kind, expected rows or None=corrupt)."""
    u = rng.random()
    if u < 0.08:
        kind = str(rng.choice(FILE_OK))
        if kind == 'empty':
            f.write_bytes(b'')
        elif kind == 'blank':
            f.write_bytes(''.join(rng.choice([' ', '\t', '\n', '\r\n'], size=int(rng.integers(1, 8)))).encode())
        return kind, np.zeros((0, 5))
    if u < 0.16:
        kind = str(rng.choice(FILE_FAULTS))
        if kind == 'folder':
            f.mkdir()
        elif kind == 'binary':  # random bytes, with 0xff somewhere: never valid UTF-8
            b = bytearray(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes())
            b.insert(int(rng.integers(len(b) + 1)), 0xFF)
            f.write_bytes(bytes(b))
        else:  # a good file with one undecodable byte
            b = bytearray(b'0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n')
            b.insert(int(rng.integers(len(b) + 1)), int(rng.choice([0xFF, 0xFE, 0xC0])))
            f.write_bytes(bytes(b))
        return kind, None
    lines, rows = [], []
    for _ in range(int(rng.integers(1, 7))):
        tokens, row = _valid_row(rng)
        lines.append(tokens)
        rows.append(row)
        if rng.random() < 0.15:  # a duplicate, maybe written differently: removed, first one kept
            lines.append(tokens)
            rows.append(row)
    kind, expect = 'good', _dedupe(rows)
    if u < 0.6:
        kind = str(rng.choice(ROW_FAULTS))
        lines.insert(int(rng.integers(len(lines) + 1)), _broken_row(rng, kind))
        expect = None
    text = []
    for tokens in lines:  # separators, padding and blank lines that must not matter
        sep = str(rng.choice([' ', '  ', '\t', ' \t ']))
        pad = [str(rng.choice(['', '', ' ', '\t'])) for _ in range(2)]
        text.append(pad[0] + sep.join(tokens) + pad[1])
        if rng.random() < 0.1:
            text.append(str(rng.choice(['', ' ', '\t'])))
    eol = str(rng.choice(['\n', '\r\n', '\r']))
    f.write_bytes((eol.join(text) + (eol if rng.random() < 0.7 else '')).encode())
    return kind, expect


# ---------------------------------------------------------------------------------------------- image generator
IMAGE_OK = ('jpg', 'png', 'gray_png', 'rgba_png', 'png16', 'gray16_png', 'gray_jpg', 'bmp', 'tif', 'webp',
            'png_named_jpg', 'jpg_named_png', 'min_10x10')
IMAGE_BAD = ('truncated_jpg', 'truncated_png', 'truncated_bmp', 'zero_bytes', '1x1', '9x9', 'text_named_jpg',
             'folder_named_jpg')


def make_image(rng: np.random.Generator, folder: Path, stem: str) -> tuple[str, Path, tuple[int, int] | None]:
    """Write a random image file in ``folder``; returns (kind, path, (w, h) when it must be usable, else None)."""
    kind = str(rng.choice(IMAGE_OK + IMAGE_BAD))
    w, h = (int(x) for x in rng.integers(10, 80, 2))
    if kind == 'min_10x10':
        w = h = 10
    elif kind == '1x1':
        w = h = 1
    elif kind == '9x9':
        w, h = 9, int(rng.integers(9, 40))
    bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr = {'gray_png': bgr[..., 0], 'gray_jpg': bgr[..., 0], 'gray16_png': bgr[..., 0].astype(np.uint16) * 257,
           'rgba_png': np.dstack([bgr, bgr[..., :1]]), 'png16': bgr.astype(np.uint16) * 257}.get(kind, bgr)
    enc = {'png': '.png', 'gray_png': '.png', 'rgba_png': '.png', 'png16': '.png', 'gray16_png': '.png',
           'png_named_jpg': '.png', 'truncated_png': '.png', 'min_10x10': '.png', '1x1': '.png', 'bmp': '.bmp',
           'truncated_bmp': '.bmp', 'tif': '.tif', 'webp': '.webp'}.get(kind, '.jpg')
    suffix = {'png_named_jpg': '.jpg', 'jpg_named_png': '.png', 'text_named_jpg': '.jpg',
              'folder_named_jpg': '.jpg', 'zero_bytes': '.png'}.get(kind, enc)
    f = folder / f'{stem}{suffix}'
    data = cv2.imencode(enc, arr)[1].tobytes()
    if kind.startswith('truncated'):  # at most 90 % kept: the end marker / last chunk / pixel rows are gone
        data = data[:int(len(data) * rng.uniform(0.05, 0.9))]
    elif kind == 'zero_bytes':
        data = b''
    elif kind == 'text_named_jpg':
        data = b'0 0.5 0.5 0.2 0.2\n' * int(rng.integers(1, 20))
    if kind == 'folder_named_jpg':
        f.mkdir()
    else:
        f.write_bytes(data)
    return kind, f, ((w, h) if kind in IMAGE_OK else None)


def make_fuzz_set(root: Path, seed: int, n_labels: int, n_images: int) -> dict:
    """images/val + labels/val under ``root``: n_labels random label files (each with a good image) and n_images
    random images (each with a good label). Returns {'labels': {image: (kind, rows|None)}, 'images': {image:
    (kind, (w, h)|None)}} keyed by the image path."""
    rng = np.random.default_rng(seed)
    ims, lbs = root / 'images' / 'val', root / 'labels' / 'val'
    ims.mkdir(parents=True)
    lbs.mkdir(parents=True)
    good_png = cv2.imencode('.png', rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))[1].tobytes()
    out: dict = {'labels': {}, 'images': {}}
    for i in range(n_labels):
        im = ims / f'l{i:05d}.png'
        im.write_bytes(good_png)
        out['labels'][str(im)] = make_label(rng, lbs / f'l{i:05d}.txt')
    for i in range(n_images):
        kind, im, wh = make_image(rng, ims, f'i{i:05d}')
        (lbs / f'i{i:05d}.txt').write_text('0 0.5 0.5 0.2 0.2\n')
        out['images'][str(im)] = (kind, wh)
    (root / 'data.yaml').write_text(f'path: {root}\ntrain: images/val\nval: images/val\nnames: {NAMES}\n')
    return out


@pytest.fixture(scope='module')
def fuzz(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp('fuzz')
    return root, make_fuzz_set(root, SEED, N_LABELS, N_IMAGES)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------- randomized tests
def test_random_labels_and_images_scan(fuzz, caplog):
    root, truth = fuzz
    caplog.set_level(logging.INFO, logger='yolov5')
    ds = LoadImagesAndLabels(root / 'images' / 'val', img_size=64, batch_size=16, nc=NC)  # must not raise
    kept = dict(zip(ds.im_files, ds.labels))
    warned = _warnings(caplog)

    # every accepted label is well formed, whatever the generator meant
    for lb in ds.labels:
        assert lb.dtype == np.float32 and lb.ndim == 2 and lb.shape[1] == 5
        assert np.isfinite(lb).all()
        assert ((lb[:, 0] >= 0) & (lb[:, 0] < NC) & (lb[:, 0] == np.round(lb[:, 0]))).all()
        assert ((lb[:, 1:] >= 0) & (lb[:, 1:] <= 1)).all()

    # and each file got the verdict its generator intended
    n_bad = 0
    for im, (kind, rows) in truth['labels'].items():
        if rows is None:
            n_bad += 1
            assert im not in kept, f'{kind} label accepted: {Path(img2label_paths([im])[0]).read_bytes()!r}'
            assert any(img2label_paths([im])[0] in w and 'ignoring corrupt label: ' in w for w in warned), kind
        else:
            assert im in kept, f'{kind} label refused: {Path(img2label_paths([im])[0]).read_bytes()!r}'
            np.testing.assert_allclose(kept[im], rows, atol=1e-6, err_msg=kind)
    shapes = dict(zip(ds.im_files, ds.shapes.tolist()))
    for im, (kind, wh) in truth['images'].items():
        if wh is None:
            n_bad += 1
            assert im not in kept, kind
            assert any(im in w and 'ignoring corrupt image: ' in w for w in warned), kind
        else:
            assert im in kept and shapes[im] == list(wh), kind
    assert ds.stats['corrupt'] == n_bad and len(ds) == ds.stats['total'] - n_bad

    # every kept image loads at its size (cv2 reads what the scan accepted), labels in range
    for i in range(len(ds)):
        img, (h0, w0), _ = ds.load_image(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert [w0, h0] == ds.shapes[i].tolist()
    loader = create_dataloader(str(root / 'images' / 'val'), 64, 32, 32, rect=True, pad=0.5, workers=0, nc=NC)[0]
    assert sum(len(b[2]) for b in loader) == len(ds)

    # the cache gives the same verdicts
    again = LoadImagesAndLabels(root / 'images' / 'val', img_size=64, batch_size=16, nc=NC)
    assert again.stats == ds.stats and again.im_files == ds.im_files
    assert all(np.array_equal(a, b) for a, b in zip(again.labels, ds.labels))

    kinds = Counter(k for k, r in truth['labels'].values())
    image_kinds = Counter(k for k, _ in truth['images'].values())
    print(f'\nfuzz seed={SEED}: {len(truth["labels"])} label files {dict(sorted(kinds.items()))}, '
          f'{len(truth["images"])} images {dict(sorted(image_kinds.items()))}; scan: {ds.stats}')


def test_random_set_val_end_to_end(fuzz, tmp_path, caplog):
    """val.py on the randomized set: finishes with a results row over exactly the usable images."""
    root, truth = fuzz
    caplog.set_level(logging.INFO, logger='yolov5')
    usable = sum(r is not None for _, r in truth['labels'].values()) + \
        sum(wh is not None for _, wh in truth['images'].values())
    (mp, mr, map50, map5095, *_), maps, _ = val.run(data=root / 'data.yaml', imgsz=64, batch_size=32, device='cpu',
                                                    workers=0, plots=False, project=tmp_path)
    assert maps.shape == (NC,) and all(np.isfinite([mp, mr, map50, map5095]))
    m = json.loads((tmp_path / 'exp' / 'metrics.json').read_text())
    assert m['images'] == usable
    rows = [r.getMessage().split() for r in caplog.records]
    assert any(r[:2] == ['all', str(usable)] for r in rows)


# ---------------------------------------------------------------------------------------------- the two rows
BAD_ROWS = {'class': '7 0.5 0.5 0.2 0.2', 'nan': '0 nan 0.5 0.2 0.2'}


def tiny_copy(root: Path, n_train: int = 8, n_val: int = 6) -> Path:
    """A copy of the first images of the embedded set (nc: 3) whose first two label files, in each split, get one
    of BAD_ROWS appended; returns its data yaml."""
    shapes = check_dataset(ROOT / 'data' / 'shapes.yaml')  # generates the set on first use
    src = Path(shapes['path'])
    for split, n in (('train', n_train), ('val', n_val)):
        for sub in ('images', 'labels'):
            (root / sub / split).mkdir(parents=True)
        for i, im in enumerate(sorted((src / 'images' / split).glob('*.jpg'))[:n]):
            shutil.copy(im, root / 'images' / split / im.name)
            lb = (src / 'labels' / split / f'{im.stem}.txt').read_text()
            if i < len(BAD_ROWS):
                lb = lb.rstrip('\n') + '\n' + list(BAD_ROWS.values())[i] + '\n'
            (root / 'labels' / split / f'{im.stem}.txt').write_text(lb)
    f = root / 'tiny.yaml'
    f.write_text(f'path: {root}\ntrain: images/train\nval: images/val\nnc: 3\nnames: {NAMES}\n')
    return f


def _assert_two_skipped(out: str, split: str, n: int) -> None:
    """The scan line of ``split`` counts 2 corrupt of ``n`` images and each bad file is named with its reason."""
    scan = [x for x in out.splitlines() if f'{split}: Scanning' in x and x.rstrip().endswith('corrupt')]
    assert scan and scan[-1].rstrip().endswith(f'{n - 2} images, 0 backgrounds, 2 corrupt'), out
    warn = [x for x in out.splitlines() if f'labels/{split}/' in x and 'ignoring corrupt label: ' in x]
    assert len(warn) == 2 and 'WARNING ⚠️' in warn[0], out
    assert any('class id 7 >= nc=3' in x for x in warn) and any('non-finite value' in x and 'nan' in x
                                                                 for x in warn), warn


@pytest.mark.slow
def test_val_cli_skips_class_and_nan_rows(tmp_path):
    data = tiny_copy(tmp_path / 'd')
    p = subprocess.run([sys.executable, 'val.py', '--data', str(data), '--imgsz', '64', '--batch-size', '4',
                        '--device', 'cpu', '--workers', '0', '--project', str(tmp_path / 'runs')],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = re.sub(r'\x1b\[[0-9;]*m', '', p.stdout + p.stderr)  # no colours
    assert p.returncode == 0 and 'Traceback' not in out, out
    _assert_two_skipped(out, 'val', 6)
    assert any(x.split()[:2] == ['all', '4'] for x in out.splitlines()), out  # results row over the 4 kept images
    assert json.loads((tmp_path / 'runs' / 'exp' / 'metrics.json').read_text())['images'] == 4


@pytest.mark.slow
def test_train_cli_skips_class_and_nan_rows(tmp_path):
    data = tiny_copy(tmp_path / 'd')
    p = subprocess.run([sys.executable, 'train.py', '--data', str(data), '--imgsz', '64', '--batch-size', '4',
                        '--epochs', '1', '--workers', '0', '--device', 'cpu', '--noplots',
                        '--project', str(tmp_path / 'runs')],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = re.sub(r'\x1b\[[0-9;]*m', '', p.stdout + p.stderr)  # no colours
    assert p.returncode == 0 and 'Traceback' not in out, out
    _assert_two_skipped(out, 'train', 8)
    _assert_two_skipped(out, 'val', 6)
    header, *rows = (tmp_path / 'runs' / 'exp' / 'results.csv').read_text().splitlines()
    assert len(rows) == 1 and 'metrics/mAP_0.5' in header
    assert any(x.split()[:2] == ['all', '4'] for x in out.splitlines()), out  # final validation of best.pt


def test_single_cls_still_refuses_class_ids_beyond_the_data(tmp_path, caplog):
    """--single-cls merges the data's classes into one; a class id >= the yaml's nc is still a broken label."""
    data = check_dataset(tiny_copy(tmp_path / 'd'))
    caplog.set_level(logging.INFO, logger='yolov5')
    (mp, *_), maps, _ = val.run(data=data, imgsz=64, batch_size=8, device='cpu', workers=0, single_cls=True,
                                plots=False, project=tmp_path / 'runs')
    assert maps.shape == (1,)
    warned = _warnings(caplog)
    assert any('class id 7 >= nc=3' in w for w in warned) and any('non-finite value' in w for w in warned)
    assert json.loads((tmp_path / 'runs' / 'exp' / 'metrics.json').read_text())['images'] == 4
    _, ds = create_dataloader(data['train'], 64, 4, 32, single_cls=True, workers=0, nc=data['nc'])
    assert ds.stats['corrupt'] == 2 and len(ds) == 6
    assert all((lb[:, 0] == 0).all() for lb in ds.labels) and sum(len(lb) for lb in ds.labels) > 6


def test_sparsity_sweep_skips_class_and_nan_rows(tmp_path, caplog):
    """val.py --task sparsity builds its own loader: the same two files are skipped, the table has its row."""
    data = tiny_copy(tmp_path / 'd')
    caplog.set_level(logging.INFO, logger='yolov5')
    _, rows = val.sparsity_sweep(data=data, imgsz=64, batch_size=8, device='cpu', workers=0, project=tmp_path / 'r',
                                 amounts=[0.0], scopes=('layer',))
    assert len(rows) == 1 and np.isfinite(float(rows[0]['mAP50']))
    warned = _warnings(caplog)
    assert any('class id 7 >= nc=3' in w for w in warned) and any('non-finite value' in w for w in warned)


# ---------------------------------------------------------------------------------------------- the label cache
def _forge_cache(cache: Path, version: str, nc: int | None) -> None:
    """Rewrite ``cache`` as a cache that version ``version`` would have written for ``nc`` with every file OK."""
    with np.load(cache, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    ims = [str(x) for x in a['im_files']]
    lbs = img2label_paths(ims)
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)] * len(ims)  # a laxer check's verdict: all fine
    extra = f'{version};nc={nc}' if version == labels_mod.CACHE_VERSION else f'nc={nc}'  # version 1 hashed nc only
    a.update(version=np.array(version), hash=np.array(labels_mod.get_hash(lbs + ims, extra=extra)),
             status=np.zeros(len(ims), np.uint8), n_labels=np.ones(len(ims), np.int64),
             labels=np.concatenate(labels), msgs=np.array([], dtype=str))
    with open(cache, 'wb') as f:
        np.savez(f, **a)


def test_cache_from_another_nc_or_version_never_hides_bad_labels(tmp_path):
    data = check_dataset(tiny_copy(tmp_path / 'd'))
    images = data['val']
    cache = Path(img2label_paths([str(next(Path(images).glob('*.jpg')))])[0]).parent.with_suffix('.cache')
    assert LoadImagesAndLabels(images, 64, nc=3).stats['corrupt'] == 2 and cache.is_file()

    # the forging is faithful: a forged cache that matches this version and nc is trusted (all 6 "fine")
    _forge_cache(cache, labels_mod.CACHE_VERSION, 3)
    assert LoadImagesAndLabels(images, 64, nc=3).stats['corrupt'] == 0
    # a cache written without the class check (nc=None, the old callers), or by version 1: rebuilt, 2 corrupt again
    for version, nc in ((labels_mod.CACHE_VERSION, None), ('sparse-yolov5-labels-1', None), ('sparse-yolov5-labels-1', 3)):
        _forge_cache(cache, version, nc)
        ds = LoadImagesAndLabels(images, 64, nc=3)
        assert ds.stats['corrupt'] == 2 and ds.stats['total'] == 6, (version, nc)
    # and the verdict of one nc is not reused for another: with nc=8 class 7 is fine, with nc=3 it is not
    assert LoadImagesAndLabels(images, 64, nc=8).stats['corrupt'] == 1
    assert LoadImagesAndLabels(images, 64, nc=3).stats['corrupt'] == 2
