"""utils/coco_eval.py: 80->91 table, category mapping, result json format, pycocotools golden values."""
from __future__ import annotations

import json
import os

import pytest
import torch

from utils.coco_eval import (annotation_file, category_ids, coco80_to_coco91_class, coco_evaluate, image_id,
                             is_coco_dataset, predictions_to_coco)

# A hand-made ground truth: 3 images, 2 categories with non-contiguous ids (5 'cat', 9 'dog').
GT_BOXES = {1: [(5, [10, 10, 40, 30]), (9, [60, 50, 30, 30])],
            2: [(5, [0, 0, 50, 50])],
            3: [(9, [20, 30, 60, 40]), (9, [100, 100, 20, 40])]}


@pytest.fixture()
def anno_json(tmp_path):
    anns = [{'id': k + 1, 'image_id': i, 'category_id': c, 'bbox': b, 'area': b[2] * b[3], 'iscrowd': 0}
            for k, (i, c, b) in enumerate((i, c, b) for i, boxes in GT_BOXES.items() for c, b in boxes)]
    d = {'images': [{'id': i, 'file_name': f'{i:06d}.jpg', 'width': 160, 'height': 160} for i in GT_BOXES],
         'annotations': anns, 'categories': [{'id': 5, 'name': 'cat'}, {'id': 9, 'name': 'dog'}]}
    f = tmp_path / 'instances_val.json'
    f.write_text(json.dumps(d))
    return f


def perfect(ids=GT_BOXES):
    return [{'image_id': i, 'category_id': c, 'bbox': list(map(float, b)), 'score': 0.9} for i in ids
            for c, b in GT_BOXES[i]]


def test_coco80_to_coco91_spot_values():
    m = coco80_to_coco91_class()
    assert len(m) == 80 and m[0] == 1 and m[11] == 13 and m[79] == 90
    assert m[24] == 27 and m[40] == 46  # after the unused ids 26 and 45
    assert all(a < b for a, b in zip(m, m[1:]))


def test_perfect_predictions_score_one(anno_json, capsys):
    s = coco_evaluate(anno_json, perfect())
    assert s.ap == 1.0 and s.ap50 == 1.0 and s.ar100 == 1.0 and s.images == 3
    assert len(s.stats) == 12
    assert 'Average Precision' in capsys.readouterr().out  # pycocotools' 12-line summary is printed


def test_low_scored_false_positive_keeps_ap_one(anno_json):
    preds = perfect() + [{'image_id': 2, 'category_id': 5, 'bbox': [100, 100, 30, 30], 'score': 0.1}]
    assert coco_evaluate(anno_json, preds).ap == 1.0


def test_half_of_dogs_found_golden(anno_json):
    """Only 'cat' found perfectly; of 3 dogs only the one in image 1: dog recall 1/3.

    Dog AP: precision 1 for recall thresholds 0, 0.01 .. 0.33 (34 of 101 points) -> 34/101; cat AP 1.
    AR@100: (1 + 1/3) / 2.
    """
    preds = [p for p in perfect() if p['category_id'] == 5] + perfect([1])[1:]
    s = coco_evaluate(anno_json, preds)
    assert s.ap == pytest.approx((1 + 34 / 101) / 2, abs=1e-6)
    assert s.ar100 == pytest.approx((1 + 1 / 3) / 2, abs=1e-6)


def test_img_ids_restrict_evaluation(anno_json, tmp_path):
    """Images outside img_ids are ignored (their missing predictions do not count); unknown ids are dropped."""
    preds = perfect([1, 2])  # nothing for image 3
    assert coco_evaluate(anno_json, preds).ap < 1.0
    f = tmp_path / 'pred.json'
    f.write_text(json.dumps(preds))
    s = coco_evaluate(anno_json, f, img_ids=[1, 2, 777])
    assert s.ap == 1.0 and s.images == 2
    assert coco_evaluate(anno_json, preds, img_ids=[3]) is None  # no predictions left for image 3


def test_category_ids(anno_json):
    assert category_ids({0: 'dog', 1: 'cat'}, anno_json) == [9, 5]  # by name
    assert category_ids(['a', 'b'], anno_json) == [5, 9]  # by position when names differ
    assert category_ids(['a', 'b', 'c'], anno_json) == [0, 1, 2]  # neither: class index
    assert category_ids(['a', 'b', 'c']) == [0, 1, 2]
    assert category_ids({i: str(i) for i in range(80)}, coco=True)[79] == 90


def test_predictions_to_coco_golden():
    predn = torch.tensor([[10.0, 20.0, 50.5, 80.0, 0.8765432, 1.0], [0.0, 0.0, 1.0, 2.0, 0.5, 0.0]])
    out = predictions_to_coco(predn, '/x/images/000000000139.jpg', class_map=[3, 7])
    assert out[0] == {'image_id': 139, 'category_id': 7, 'bbox': [10.0, 20.0, 40.5, 60.0], 'score': 0.87654}
    assert out[1]['bbox'] == [0.0, 0.0, 1.0, 2.0] and out[1]['category_id'] == 3
    assert image_id('a/b/img_7.png') == 'img_7'


def test_is_coco_and_annotation_file(tmp_path, anno_json):
    assert is_coco_dataset({'val': f'/d/coco{os.sep}val2017.txt', 'names': {0: 'a'}})
    from utils.coco_eval import coco_names
    names = coco_names()
    assert len(names) == 80 and names[0] == 'person'
    assert is_coco_dataset({'val': '/elsewhere', 'names': dict(enumerate(names))})
    assert not is_coco_dataset({'val': '/d/shapes/images/val', 'names': {0: 'circle'}})
    assert annotation_file({'coco_json': str(anno_json)}) == anno_json
    assert annotation_file({'coco_json': str(tmp_path / 'missing.json')}) is None
    assert annotation_file({'val': '/x', 'names': {}}) is None
