"""argparse value types: good values parse, bad ones raise ArgumentTypeError with a one-line message."""
from __future__ import annotations

import argparse

import pytest

from utils.cli import float_in, fraction, int_at_least, prune_amount


def test_prune_amount():
    assert prune_amount('0') == 0.0 and prune_amount('0.3') == 0.3
    for bad in ('1', '1.5', '-0.1', 'nan', 'abc'):
        with pytest.raises(argparse.ArgumentTypeError):
            prune_amount(bad)


def test_ranges():
    assert fraction('1') == 1.0 and int_at_least(1)('3') == 3
    with pytest.raises(argparse.ArgumentTypeError, match='>= 1'):
        int_at_least(1)('0')
    with pytest.raises(argparse.ArgumentTypeError, match='not an integer'):
        int_at_least(0)('1.5')
    open_unit = float_in(0, 1, lo_open=True, hi_open=True)
    assert open_unit('0.5') == 0.5
    for bad in ('0', '1', 'inf'):
        with pytest.raises(argparse.ArgumentTypeError, match=r'\(0, 1\)'):
            open_unit(bad)


@pytest.mark.parametrize('script', ['train', 'val', 'detect', 'export', 'compare'])
def test_readme_help_block_matches_parser(script, capsys, monkeypatch):
    """README's `python X.py --help` block is the parser's current help (every flag documented, none stale)."""
    import importlib
    import re
    from pathlib import Path

    monkeypatch.setenv('COLUMNS', '120')
    module = importlib.import_module(script)
    with pytest.raises(SystemExit):
        module.parse_opt(['--help'])
    lines = capsys.readouterr().out.rstrip('\n').split('\n')
    options = lines[next(i for i, line in enumerate(lines) if line.strip().startswith('-h, --help')) + 1:]
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    block = re.search(rf'<code>python {script}\.py --help</code></summary>\n\n```\n(.*?)\n```', readme, re.S)
    assert block, f'README has no help block for {script}.py'
    assert block.group(1).split('\n') == options, f'README help block of {script}.py is stale: regenerate it'
