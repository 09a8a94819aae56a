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
