"""Shared test fixtures: repository root on sys.path, paths to upstream fixture checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UPSTREAM = ROOT.parent / 'shared' / 'fixtures' / 'upstream'


@pytest.fixture(scope='session')
def upstream_dir() -> Path:
    if not UPSTREAM.is_dir():
        pytest.skip(f'upstream fixtures not found at {UPSTREAM}')
    return UPSTREAM


def shapes_subset(root: Path, n_train: int, n_val: int) -> Path:
    """A data yaml in ``root`` listing the first n_train / n_val images of the embedded shapes set."""
    from utils.dataloaders import check_dataset

    d = check_dataset('shapes.yaml')  # generates the set offline on first use
    for split, n in (('train', n_train), ('val', n_val)):
        files = sorted(Path(d[split]).glob('*.jpg'))[:n]
        (root / f'{split}.txt').write_text('\n'.join(str(f) for f in files) + '\n')
    f = root / 'tiny.yaml'
    f.write_text(f'path: {root}\ntrain: train.txt\nval: val.txt\nnames: {{0: circle, 1: rectangle, 2: triangle}}\n')
    return f


@pytest.fixture(autouse=True)
def _restore_yolov5_logger():
    """CLI entry points call set_logging(), which stops propagation to the root logger; undo that after each test
    so that caplog-based tests see the 'yolov5' records whatever ran before them."""
    import logging

    log = logging.getLogger('yolov5')
    state = log.level, log.propagate, list(log.handlers)
    yield
    log.setLevel(state[0])
    log.propagate = state[1]
    log.handlers[:] = state[2]
