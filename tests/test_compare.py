"""compare.py end to end on a tiny subset of the embedded set (slow): every row evaluated, all files written."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

import compare
from tests.conftest import shapes_subset


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    return shapes_subset(tmp_path_factory.mktemp('cmp_data'), 8, 8)


@pytest.mark.slow
def test_compare_cli_rows_and_files(tiny_data, tmp_path, upstream_dir):
    rows = compare.main(compare.parse_opt([
        '--data', str(tiny_data), '--weights', str(upstream_dir / 'yolov5n-v7.0.pt'), '--amounts', '0.5',
        '--scopes', 'layer', 'global', '--finetune-epochs', '1', '--imgsz', '64', '--batch-size', '8',
        '--train-batch-size', '4', '--workers', '0', '--project', str(tmp_path)]))
    assert [(r.method, r.scope) for r in rows] == [('dense', '-'), ('one-shot', 'layer'), ('one-shot', 'global'),
                                                  ('one-shot+ft', 'global'), ('dns', 'global')]
    assert rows[0].sparsity < 1e-4 and all(abs(r.sparsity - 0.5) < 0.005 for r in rows[1:])
    assert all(r.size_compact_mb < 0.6 * r.size_dense_mb for r in rows[1:])
    out = tmp_path / 'compare'
    with open(out / 'comparison.csv') as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (out / 'comparison.png').stat().st_size > 0
    assert 'Made by `python' in (out / 'comparison.md').read_text()


def test_bad_amount_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_opt(['--amounts', '1.2'])
    assert e.value.code == 2 and 'must be in (0, 1)' in capsys.readouterr().err


def test_from_csv_merges_without_evaluating(tmp_path):
    """--from-csv: two earlier tables (different seeds) become one, with mean ± std and the paired differences."""
    from utils.comparison import Row, write_all

    def table(seed: int, ft: float, dns: float) -> Path:
        rows = [Row('dense', mAP50_95=0.8),
                Row('one-shot+ft', 'global', 0.5, mAP50=0.9, mAP50_95=ft, epochs=5, seed=seed),
                Row('dns', 'global', 0.5, mAP50=0.9, mAP50_95=dns, epochs=5, seed=seed)]
        return write_all(rows, tmp_path / f'seed{seed}')['csv']

    a, b = table(0, 0.70, 0.72), table(1, 0.71, 0.70)
    rows = compare.run(compare.parse_opt(['--from-csv', str(a), str(b), '--project', str(tmp_path), '--name', 'm',
                                          '--weights', str(tmp_path / 'never-read.pt')]))
    assert [(r.method, r.seed) for r in rows] == [('dense', None), ('one-shot+ft', 0), ('dns', 0),
                                                  ('one-shot+ft', 1), ('dns', 1)]
    md = (tmp_path / 'm' / 'comparison.md').read_text()
    assert '| dns | global | 0.500 | 5 | 2 | 0 1 |' in md and '| 1/2 |' in md and 'Merged by `python compare.py' in md
