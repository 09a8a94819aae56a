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


@pytest.mark.slow
def test_compare_structured_rows_latency_and_pairing(tiny_data, tmp_path):
    """--structured: dense, one-shot and one-shot+ft per importance, channel DNS, with GFLOPs, latency and the
    paired channel-DNS table; the pruned rows are physically smaller (params, GFLOPs)."""
    rows = compare.main(compare.parse_opt([
        '--structured', '--data', str(tiny_data), '--amounts', '0.3', '--importances', 'l1', 'group',
        '--dns-importance', 'group', '--slim-lambda', '0', '--finetune-epochs', '1', '--seeds', '0', '--imgsz', '64',
        '--batch-size', '8', '--train-batch-size', '4', '--workers', '0', '--latency-img', '64',
        '--latency-repeats', '1', '--project', str(tmp_path)]))
    assert [r.method for r in rows] == ['dense', 'ch one-shot (l1)', 'ch one-shot (group)', 'ch one-shot+ft (l1)',
                                        'ch one-shot+ft (group)', 'ch dns (group)']
    dense, *pruned = rows
    assert all(r.params < dense.params and r.gflops < 0.8 * dense.gflops for r in pruned)
    assert all(r.latency_ms > 0 for r in rows)
    md = (tmp_path / 'compare' / 'comparison.md').read_text()
    assert 'ch dns (group) minus ch one-shot+ft (group), mAP50-95, paired by seed' in md


@pytest.mark.slow
def test_compare_share_weights_rows(tiny_data, tmp_path):
    """--share-weights: the sparse model, one-shot shared and centroid-fine-tuned rows, each with its .deep.pt size."""
    import torch

    from utils.checkpoint import load, make_checkpoint, save
    from utils.compression.weight.magnitude import prune

    ckpt = load(Path(__file__).parents[1] / 'data' / 'weights' / 'yolov5n-shapes.pt')
    model = ckpt['model'].float()
    prune(model, 0.7, 'global')
    sparse = tmp_path / 'sparse70.pt'
    save(make_checkpoint(model), sparse)
    rows = compare.main(compare.parse_opt([
        '--share-weights', str(sparse), '--share-bits', '3', '--share-epochs', '1', '--data', str(tiny_data),
        '--imgsz', '64', '--batch-size', '8', '--train-batch-size', '4', '--workers', '0', '--project', str(tmp_path)]))
    assert [r.method for r in rows] == ['sparse', 'shared 3-bit', 'shared 3-bit+ft']
    assert all(abs(r.sparsity - 0.7) < 0.01 for r in rows)
    assert all(r.ratio_fp32 > 10 for r in rows[1:])  # 3-bit indices, coded positions: >10x under the FP32 file
    shared = torch.load(tmp_path / 'compare' / 'models' / 'sparse70-shared3e8-ft.pt', map_location='cpu',
                        weights_only=False)['model'].float()
    conv = shared.model[2].cv1.conv.weight
    assert conv[conv != 0].unique().numel() <= 8  # the fine-tuned file holds exactly 2^3 shared values per layer
    assert 'step mean' in (tmp_path / 'compare' / 'comparison.md').read_text()


def test_share_weights_output_names_are_unique():
    """Two runs' last.pt must not overwrite each other's shared/coded files and fine-tuning runs."""
    runs = [Path('runs/train/dns70/weights/last.pt'), Path('runs/train/dns90/weights/last.pt')]
    assert compare.unique_stems(runs) == ['dns70-last', 'dns90-last']
    assert compare.unique_stems([Path('a.pt'), Path('b.pt')]) == ['a', 'b']
    assert compare.unique_stems([Path('x/last.pt'), Path('y/x/last.pt')]) == ['x-last-0', 'x-last-1']
