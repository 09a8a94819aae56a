"""COCO-format detection results: writing predictions json and scoring them with pycocotools.

Result format (one dict per detection, what pycocotools' ``COCO.loadRes`` reads)::

    {"image_id": 42, "category_id": 18, "bbox": [x, y, w, h], "score": 0.236}

``bbox`` is in pixels of the original image, (x, y) the top-left corner, rounded to 3 decimals; ``score``
rounded to 5 decimals; ``image_id`` is ``int(stem)`` for numeric file stems (COCO's 000000000139.jpg -> 139)
else the stem string, as upstream YOLOv5.

Class index -> category id: COCO's 80 training classes map to its 91-id scheme (``coco80_to_coco91_class``);
any other data set is mapped through the categories of its annotation file (by name, else by position), or
left as the class index when there is no annotation file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.general import LOGGER, ROOT, xyxy2xywh, yaml_load

# COCO's 91 category ids that were never used for the 80 released classes (ids run 1..90).
_COCO91_UNUSED = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


def coco80_to_coco91_class() -> list[int]:
    """Category id (1..90) of each of COCO's 80 class indices (0..79): ``[1, 2, ..., 11, 13, ..., 90]``."""
    return [i for i in range(1, 91) if i not in _COCO91_UNUSED]


def coco_names() -> list[str]:
    """COCO's 80 class names in class-index order, read from the repo's data/coco.yaml ([] if absent)."""
    f = ROOT / 'data' / 'coco.yaml'
    if not f.is_file():
        return []
    names = yaml_load(f).get('names', {})
    return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)


def is_coco_dataset(data: dict) -> bool:
    """True for COCO: the val list ends with ``coco/val2017.txt`` (upstream's rule) or the names are COCO's 80."""
    val = data.get('val')
    if isinstance(val, str) and val.endswith(f'coco{os.sep}val2017.txt'):
        return True
    names = data.get('names') or {}
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    return len(names) == 80 and names == coco_names()


def annotation_file(data: dict) -> Path | None:
    """The COCO-style ground truth json of the val split, if it exists.

    From the data yaml's ``coco_json:`` key (made absolute by check_dataset), else for COCO the upstream place
    ``<path>/annotations/instances_val2017.json``.
    """
    f = data.get('coco_json')
    if not f and is_coco_dataset(data) and data.get('path'):
        f = Path(data['path']) / 'annotations' / 'instances_val2017.json'
    return Path(f) if f and Path(f).is_file() else None


def category_ids(names: dict[int, str] | list[str], anno_json: str | Path | None = None,
                 coco: bool = False) -> list[int]:
    """Category id for each class index 0..len(names)-1.

    COCO -> the 80->91 table. Otherwise the annotation file's categories decide: matched by name when every
    class name is there, else by position (categories sorted by id) when the counts agree. Without a usable
    annotation file the class index itself is the category id.
    """
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    if coco:
        return coco80_to_coco91_class()
    if anno_json is not None:
        cats = sorted(json.loads(Path(anno_json).read_text()).get('categories', []), key=lambda c: c['id'])
        by_name = {c['name']: c['id'] for c in cats}
        if names and all(n in by_name for n in names):
            return [by_name[n] for n in names]
        if len(cats) == len(names):
            return [c['id'] for c in cats]
        LOGGER.warning(f'WARNING ⚠️ {anno_json}: its {len(cats)} categories match neither the names nor the number '
                       f'of the {len(names)} classes; writing class indices as category ids')
    return list(range(len(names)))


def image_id(path: str | Path) -> int | str:
    """COCO image id of an image file: int of a numeric stem, else the stem."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def predictions_to_coco(predn: torch.Tensor, path: str | Path, class_map: list[int]) -> list[dict]:
    """Detections of one image, (n, 6) [x1, y1, x2, y2, conf, cls] in original-image pixels -> result dicts."""
    iid = image_id(path)
    predn = predn.detach().float().cpu()
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    return [{'image_id': iid, 'category_id': class_map[int(p[5])], 'bbox': [round(x, 3) for x in b],
             'score': round(p[4], 5)} for p, b in zip(predn.tolist(), box.tolist())]


@dataclass(frozen=True)
class CocoStats:
    """The 12 numbers of ``COCOeval.summarize()`` (bbox): AP@[.5:.95], AP50, AP75, AP S/M/L, AR@1/10/100, AR S/M/L.

    -1 marks a number pycocotools could not compute (e.g. no ground truth of that size).
    """
    stats: tuple[float, ...]
    images: int  # images evaluated

    @property
    def ap(self) -> float:
        """AP averaged over IoU 0.50:0.95 (COCO's headline number)."""
        return self.stats[0]

    @property
    def ap50(self) -> float:
        """AP at IoU 0.50."""
        return self.stats[1]

    @property
    def ar100(self) -> float:
        """Average recall with at most 100 detections per image."""
        return self.stats[8]


def coco_evaluate(anno_json: str | Path, pred_json: str | Path | list[dict],
                  img_ids: list[int | str] | None = None) -> CocoStats | None:
    """Score COCO-format predictions against ``anno_json`` with pycocotools (bbox); prints its 12-line summary.

    ``img_ids`` restricts the evaluation to those images (those without annotations are dropped with a
    warning); predictions for other images are ignored. Returns None when nothing is left to evaluate.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anno = COCO(str(anno_json))
    preds = json.loads(Path(pred_json).read_text()) if isinstance(pred_json, (str, Path)) else list(pred_json)
    known = set(anno.getImgIds())
    ids = sorted(known) if img_ids is None else list(dict.fromkeys(i for i in img_ids if i in known))
    if img_ids is not None and len(ids) < len(set(img_ids)):
        n = len(set(img_ids))
        LOGGER.warning(f'WARNING ⚠️ {n - len(ids)} of {n} evaluated images are not in {anno_json}; '
                       f'pycocotools scores the other {len(ids)}')
    keep = set(ids)
    preds = [dict(p) for p in preds if p['image_id'] in keep]  # copies: loadRes adds keys in place
    if not ids or not preds:
        LOGGER.warning(f'WARNING ⚠️ pycocotools: no {"images" if not ids else "predictions"} to evaluate')
        return None
    ev = COCOeval(anno, anno.loadRes(preds), 'bbox')
    ev.params.imgIds = ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return CocoStats(stats=tuple(float(x) for x in ev.stats), images=len(ids))
