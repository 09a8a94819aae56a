"""The comparison table writer on a tiny 2-row run."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict

import pytest

from utils.comparison import COLUMNS, Row, markdown, merge, paired_summary, read_csv, seed_summary, write_all


def test_write_all_two_rows(tmp_path):
    rows = [Row('dense', P=0.9, R=0.8, mAP50=0.85, mAP50_95=0.6, ms_per_img=3.2, batch=32, params=1767976,
                size_dense_mb=3.8, size_compact_mb=3.9),
            Row('one-shot', 'layer', 0.3, sparsity=0.3, sparsity_all=0.297, P=0.88, R=0.79, mAP50=0.83, mAP50_95=0.57,
                ms_per_img=3.1, batch=32, params=1767976, size_dense_mb=3.8, size_compact_mb=3.1)]
    out = write_all(rows, tmp_path / 'exp')
    assert {p.name for p in out.values()} == {'comparison.csv', 'comparison.md', 'comparison.png'}
    with open(out['csv']) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        got = list(reader)
    assert [r['method'] for r in got] == ['dense', 'one-shot']
    assert float(got[1]['sparsity']) == 0.3 and got[0]['coco_AP'] == ''  # NaN -> empty cell
    md = out['md'].read_text().splitlines()
    assert len(md) == 4 and md[0].startswith('| method | scope | target | sparsity (conv)')
    assert '| one-shot | layer | 0.300 | 0.300 |' in md[3]
    assert out['png'].stat().st_size > 5000


def test_markdown_nan_dash():
    md = markdown([Row('dense', mAP50=math.nan)])
    assert '| - |' in md


def test_seed_summary_mean_std_per_trained_group(tmp_path):
    rows = [Row('dense', mAP50=0.9, mAP50_95=0.8)]
    for seed, (ft, dns) in enumerate([(0.70, 0.75), (0.74, 0.77), (0.72, 0.76)]):
        rows += [Row('one-shot+ft', 'global', 0.7, mAP50=0.9, mAP50_95=ft, epochs=5, seed=seed),
                 Row('dns', 'global', 0.7, mAP50=0.9, mAP50_95=dns, epochs=5, seed=seed)]
    assert seed_summary(rows).splitlines()[2:] == [
        '| one-shot+ft | global | 0.700 | 5 | 3 | 0 1 2 | 0.900 ± 0.000 | 0.720 ± 0.020 | - |',
        '| dns | global | 0.700 | 5 | 3 | 0 1 2 | 0.900 ± 0.000 | 0.760 ± 0.010 | - |']
    assert seed_summary(rows[:3]) == ''  # one seed per group: no summary
    md = write_all(rows, tmp_path)['md'].read_text()
    assert 'Mean ± std over training seeds' in md and md.splitlines()[1 + 7].endswith('| 5 | 2 |')
    with open(tmp_path / 'comparison.csv') as f:
        got = list(csv.DictReader(f))
    assert got[0]['seed'] == '' and got[1]['seed'] == '0'


def trained(method: str, target: float, seed: int, m: float, epochs: int = 5) -> Row:
    return Row(method, 'global', target, mAP50=0.9, mAP50_95=m, epochs=epochs, seed=seed)


def test_paired_summary_differences_per_seed():
    rows = [Row('dense', mAP50_95=0.8)]
    for seed, (ft, dns) in enumerate([(0.70, 0.75), (0.74, 0.73), (0.72, 0.76)]):
        rows += [trained('one-shot+ft', 0.7, seed, ft), trained('dns', 0.7, seed, dns)]
    rows.append(trained('dns', 0.7, 9, 0.9))  # no baseline with seed 9: not paired
    rows.append(trained('dns', 0.7, 0, 0.5, epochs=10))  # other budget, no baseline: no line
    line = paired_summary(rows).splitlines()[2]
    assert line == '| global | 0.700 | 5 | 3 | 2/3 | +0.027 ± 0.032 | +0.040 | 0: +0.050, 1: -0.010, 2: +0.040 |'
    assert len(paired_summary(rows).splitlines()) == 3
    assert paired_summary([trained('dns', 0.7, 0, 0.7)]) == ''


def same(r: Row, q: Row) -> bool:
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(asdict(r).values(), asdict(q).values()))


def test_read_csv_round_trip_and_merge(tmp_path):
    a = [Row('dense', mAP50=0.9, mAP50_95=0.8, params=10, batch=32, weights='d.pt'),
         trained('one-shot+ft', 0.5, 0, 0.71), trained('dns', 0.5, 0, 0.73)]
    b = [Row('dense', mAP50=0.9, mAP50_95=0.8, params=10, batch=32, weights='d.pt'),
         trained('one-shot+ft', 0.5, 1, 0.72), trained('dns', 0.5, 1, 0.70), trained('dns', 0.5, 0, 0.99)]
    back = read_csv(write_all(a, tmp_path / 'a')['csv'])
    assert len(back) == 3 and all(same(r, q) for r, q in zip(back, a))
    assert back[0].seed is None and back[1].seed == 0 and math.isnan(back[0].coco_AP)
    rows = merge([back, b])  # dense once, seed 0 DNS of the second table dropped (already there)
    assert [(r.method, r.seed) for r in rows] == [('dense', None), ('one-shot+ft', 0), ('dns', 0),
                                                  ('one-shot+ft', 1), ('dns', 1)]
    assert rows[2].mAP50_95 == 0.73
    assert '| 1/2 |' in paired_summary(rows)


def test_read_csv_rejects_other_files(tmp_path):
    f = tmp_path / 'x.csv'
    f.write_text('a,b\n1,2\n')
    with pytest.raises(ValueError, match='not a comparison.csv'):
        read_csv(f)


def test_plot_seeds_and_two_budgets(tmp_path):
    """Seed repeats are drawn as mean ± std; rows with two fine-tuning budgets get separate lines."""
    rows = [Row('dense', mAP50=0.95, mAP50_95=0.82)]
    for epochs in (5, 10):
        for seed in (0, 1):
            rows += [trained('one-shot+ft', 0.5, seed, 0.78 + seed / 100, epochs),
                     trained('dns', 0.5, seed, 0.79 - seed / 100, epochs)]
    out = write_all(rows, tmp_path)
    assert out['png'].stat().st_size > 5000
    assert '| global | 0.500 | 10 | 2 | 1/2 |' in out['md'].read_text()
