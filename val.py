"""Validate a YOLOv5 detector on a data set: upstream v7.0 val.py flags, outputs and numbers, plus pruning.

Usage:
    python val.py --weights yolov5x.pt --prune 0.3 --half   # --data follows the weights: COCO for official ones
    python val.py --weights yolov5n.pt --data shapes.yaml --img 256             # P, R, mAP50, mAP50-95
    python val.py --weights best.pt --img 256 --prune 0.3 --prune-scope global  # prune, then evaluate
    python val.py --weights best.pt --img 256 --prune 0.3 --prune-granularity channel  # 30 % fewer channels
    python val.py --weights best.pt --img 256 --save-json                       # + pycocotools AP / AR@100
    python val.py --weights best.pt --img 256 --task sparsity                   # sensitivity sweep (issue 4)
    python val.py --weights a.pt b.pt --task speed --batch 1                    # speed per model
    python val.py --weights best.onnx --img 256 [--dnn]                         # export.py's ONNX file

Outputs in runs/val/exp*/ (``--project``/``--name``): confusion_matrix.png, {PR,F1,P,R}_curve.png,
val_batch{0,1,2}_{labels,pred}.jpg, labels/*.txt (--save-txt: ``cls xc yc w h [conf]`` normalized),
``<weights stem>_predictions.json`` (--save-json, COCO result format) and ``metrics.json``.

metrics.json (written by every non-training run that makes its own folder) holds one flat dict:
``P, R, mAP50, mAP50-95`` (this repo's upstream-identical definitions, all classes), ``coco_AP, coco_AP50,
coco_AR100, coco_stats`` (pycocotools, null without --save-json or annotations), ``sparsity`` (zero fraction of
the Conv2d weights), ``sparsity_all`` (of all parameters), ``ms_pre, ms_per_img, ms_nms`` (per image:
pre-process, inference, NMS), ``images, instances, imgsz, batch, precision ('fp16'|'fp32'), device, weights,
data, task, prune, prune_scope, prune_granularity, params`` (parameter count of the evaluated model) and ``classes`` ({name: {instances, P, R, mAP50, mAP50-95}}).

run() returns ``((P, R, mAP50, mAP50-95, box_loss, obj_loss, cls_loss), maps (nc,), (pre, inference, NMS) ms)``
exactly like upstream, so train.py validates through it with a live ``model=`` and ``dataloader=``. As upstream,
mAP50 and mAP50-95 in that tuple become pycocotools' AP50 / AP when --save-json scored them.

--task sparsity writes sparsity.csv, sparsity.md and sparsity.png: each weights file evaluated at the amounts
of utils.compression.weight.magnitude.sweep_amounts() (0, 0.1, ..., 0.9) for layer and global scope, from a fresh copy each time.
Pruning always acts on the unfused Conv2d weights (those a checkpoint stores), then Conv+BN are fused.
"""
from __future__ import annotations

import argparse
import csv
import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.backend import fixed_input, is_exported, is_onnx
from models.experimental import prepare_model
from utils.checkpoint import CheckpointError
from utils.cli import add_prune_args, fraction, int_at_least
from utils.coco_eval import (CocoStats, annotation_file, category_ids, coco_evaluate, image_id,
                             is_coco_dataset, predictions_to_coco)
from utils.compression.layers import SCOPES
from utils.compression.weight.magnitude import SparsityReport, sweep_amounts
from utils.data_yaml import check_dataset
from utils.dataloaders import create_dataloader
from utils.downloads import DownloadError
from utils.model_loading import (COCO_DATA, DEFAULT_CFG, DEFAULT_DATA, DEFAULT_WEIGHTS, data_or_default, default_data,
                                 load_unfused, rel_path, resolve_weights)
from utils.general import (LOGGER, ROOT, check_img_size, colorstr, increment_path, non_max_suppression, scale_boxes,
                           set_logging, xywh2xyxy, xyxy2xywh)
from utils.metrics import ConfusionMatrix, ap_per_class, process_batch
from utils.plots import output_to_target, plot_images, plot_pr_curves
from utils.torch_utils import DeviceError, de_parallel, select_device, time_sync

TASKS = ('train', 'val', 'test', 'speed', 'study', 'sparsity')
TQDM_BAR_FORMAT = '{l_bar}{bar:10}{r_bar}'
SWEEP_COLUMNS = ('weights', 'scope', 'amount', 'sparsity_prunable', 'sparsity_all', 'P', 'R', 'mAP50', 'mAP50-95')


# ------------------------------------------------------------------------------------------------ small writers
def save_one_txt(predn: torch.Tensor, save_conf: bool, shape: tuple[int, int], file: Path) -> None:
    """Append detections (n, 6) [x1, y1, x2, y2 pixels, conf, cls] of an image of ``shape`` (h, w) as
    ``cls xc yc w h [conf]`` normalized lines to ``file``."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]  # w h w h
    xywhn = xyxy2xywh(predn[:, :4].float().cpu()) / gn
    with open(file, 'a') as f:
        for (conf, cls), b in zip(predn[:, 4:6].tolist(), xywhn.tolist()):
            line = (cls, *b, conf) if save_conf else (cls, *b)
            f.write(('%g ' * len(line)).rstrip() % line + '\n')


def _callback(callbacks: Any, event: str, *args: Any) -> None:
    """Fire an upstream-style callback event when a Callbacks-like object (with .run) was given."""
    if callbacks is not None and hasattr(callbacks, 'run'):
        callbacks.run(event, *args)


def _names(model: nn.Module, nc: int) -> dict[int, str]:
    names = getattr(model, 'names', None) or getattr(de_parallel(model), 'names', None) or {}
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return {**{i: str(i) for i in range(nc)}, **names}


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def run(data: str | Path | dict | None = None,  # data yaml; None: chosen from the weights (default_data)
        weights: str | list | None = None,  # model.pt path(s); several = Ensemble
        batch_size: int = 32,
        imgsz: int = 640,  # inference size (pixels)
        conf_thres: float = 0.001,
        iou_thres: float = 0.6,  # NMS IoU threshold
        max_det: int = 300,  # detections per image
        task: str = 'val',  # train, val, test, speed or study (the split for train/val/test)
        device: str = '',
        workers: int = 8,
        single_cls: bool = False,
        augment: bool = False,  # test-time augmentation
        verbose: bool = False,  # per-class rows (always when nc < 50 outside training)
        save_txt: bool = False,
        save_hybrid: bool = False,  # labels + predictions in the txt files (autolabelling)
        save_conf: bool = False,
        save_json: bool = False,
        project: str | Path = ROOT / 'runs' / 'val',
        name: str = 'exp',
        exist_ok: bool = False,
        half: bool = True,  # FP16 on CUDA
        dnn: bool = False,  # run .onnx weights with OpenCV DNN instead of ONNX Runtime
        model: nn.Module | None = None,  # live model (train.py): no loading, no pruning, no new dataloader
        dataloader: Any = None,
        save_dir: Path = Path(''),  # used as given when set; else project/name incremented
        plots: bool = True,
        callbacks: Any = None,
        compute_loss: Any = None,
        prune: float = 0.0,  # prune this fraction of Conv2d weights before evaluating
        prune_scope: str = 'layer',
        prune_granularity: str = 'weight',  # 'channel': remove whole output channels (utils/compression/channel/pruning.py)
        prune_importance: str | None = None,  # channel ranking: 'group' (default: filters + BN + readers), 'l1', 'bn'
        prune_round: int | str = 1) -> tuple[tuple[float, ...], np.ndarray, tuple[float, float, float]]:
    """Evaluate a detector; returns ((P, R, mAP50, mAP50-95, *val losses), maps per class, (pre, infer, NMS) ms/img)."""
    training = model is not None
    report, own_dir, coco = None, False, None
    if training:  # called by train.py (or the sparsity sweep) with a live model and its dataloader
        device = next(model.parameters()).device
        half &= device.type != 'cpu'
        model.half() if half else model.float()
        if not isinstance(data, dict):
            data = check_dataset(data)
        save_dir = Path(save_dir)
    else:
        weights = resolve_weights(weights)
        data = data_or_default(data, weights, single_cls)
        data_src = str(data) if isinstance(data, (str, Path)) else str(data.get('path', 'data dict'))
        device = select_device(device, batch_size=batch_size)
        if half and device.type != 'cuda':
            LOGGER.info('--half is only supported on CUDA, using FP32')
        half &= device.type == 'cuda'
        if dnn and not any(is_onnx(w) for w in weights):
            LOGGER.info('--dnn selects OpenCV DNN for .onnx weights; ignored for PyTorch weights')
        split = task if task in ('train', 'val', 'test') else 'val'
        data = check_dataset(data, splits=(split,))
        model, report = prepare_model(load_unfused(weights, data, single_cls, data_src, device, dnn), device, half,
                                      prune, prune_scope, prune_granularity, prune_importance, prune_round)
        stride = max(int(model.stride.max()), 32)
        imgsz = check_img_size(imgsz, s=stride)
        fixed = fixed_input(model, imgsz)  # a fixed-shape ONNX export: square batches at its size, as upstream
        if fixed:
            if fixed[0] != fixed[1]:
                raise ValueError(f'{weights[0]} was exported for {fixed[0]}x{fixed[1]} (h x w) inputs; val.py needs a '
                                 'square export (--imgsz N) or one made with --dynamic')
            imgsz = fixed[0]
        if device.type == 'cuda':  # warm-up
            model(torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=torch.half if half else torch.float))
        pad, rect = (0.0, False) if task == 'speed' or fixed else (0.5, True)
        if not data.get(split):
            raise FileNotFoundError(f"the data yaml has no '{split}:' images to evaluate")
        dataloader = create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect,
                                       workers=workers, prefix=colorstr(f'{split}: '), nc=int(data['nc']))[0]
        own_dir = not str(save_dir) or str(save_dir) == '.'
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok) if own_dir else Path(save_dir)
        (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)

    model.eval()
    cuda = device.type != 'cpu'
    is_coco = is_coco_dataset(data)
    nc = 1 if single_cls else int(data['nc'])
    iouv = torch.linspace(0.5, 0.95, 10, device=device)  # IoU thresholds of mAP50-95
    niou = iouv.numel()
    names = _names(model, nc)
    anno_json = annotation_file(data) if save_json else None
    class_map = category_ids(names, anno_json, is_coco) if save_json else []

    seen = 0
    confusion_matrix = ConfusionMatrix(nc=nc)
    s = ('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95')
    tp, fp, p, r, f1, mp, mr, map50, ap50, map_ = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    ap, ap_class = [], []
    dt = [0.0, 0.0, 0.0]  # seconds: pre-process, inference, NMS
    loss = torch.zeros(3, device=device)
    jdict, stats = [], []
    _callback(callbacks, 'on_val_start')
    pbar = tqdm(dataloader, desc=s, bar_format=TQDM_BAR_FORMAT)
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        _callback(callbacks, 'on_val_batch_start')
        t0 = time_sync()
        if cuda:
            im = im.to(device, non_blocking=True)
            targets = targets.to(device)
        im = im.half() if half else im.float()
        im /= 255  # 0-255 -> 0-1
        nb, _, height, width = im.shape
        t1 = time_sync()
        preds, train_out = model(im) if compute_loss else (model(im, augment=augment), None)
        t2 = time_sync()
        if compute_loss:
            loss += compute_loss(train_out, targets)[1]  # box, obj, cls

        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        t3 = time_sync()
        preds = non_max_suppression(preds, conf_thres, iou_thres, labels=lb, multi_label=True, agnostic=single_cls,
                                    max_det=max_det)
        dt[0], dt[1], dt[2] = dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + time_sync() - t3

        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            nl, npr = labels.shape[0], pred.shape[0]
            path, shape = Path(paths[si]), shapes[si][0]
            correct = torch.zeros(npr, niou, dtype=torch.bool, device=device)
            seen += 1
            if npr == 0:
                if nl:
                    stats.append((correct.cpu(), torch.zeros(0), torch.zeros(0), labels[:, 0].cpu()))
                    if plots:
                        confusion_matrix.process_batch(detections=None, labels=labels[:, 0])
                continue
            if single_cls:
                pred[:, 5] = 0
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, shapes[si][1])  # native-space predictions
            if nl:
                tbox = xywh2xyxy(labels[:, 1:5])
                scale_boxes(im[si].shape[1:], tbox, shape, shapes[si][1])  # native-space labels
                labelsn = torch.cat((labels[:, 0:1], tbox), 1)
                correct = process_batch(predn, labelsn, iouv)
                if plots:
                    confusion_matrix.process_batch(predn, labelsn)
            stats.append((correct.cpu(), pred[:, 4].float().cpu(), pred[:, 5].float().cpu(), labels[:, 0].cpu()))
            if save_txt:
                save_one_txt(predn, save_conf, shape, file=save_dir / 'labels' / f'{path.stem}.txt')
            if save_json:
                jdict += predictions_to_coco(predn, path, class_map)
            _callback(callbacks, 'on_val_image_end', pred, predn, path, names, im[si])

        if plots and batch_i < 3:
            plot_images(im, targets, paths, save_dir / f'val_batch{batch_i}_labels.jpg', names)
            plot_images(im, output_to_target(preds, max_det=max_det), paths, save_dir / f'val_batch{batch_i}_pred.jpg',
                        names)
        _callback(callbacks, 'on_val_batch_end', batch_i, im, targets, paths, shapes, preds)

    # Metrics
    stats = [torch.cat(x, 0).numpy() for x in zip(*stats)]  # correct, conf, pred cls, target cls
    if len(stats) and stats[0].any():
        tp, fp, p, r, f1, ap, ap_class, curves = ap_per_class(*stats, names=names, return_curves=True)
        if plots:
            plot_pr_curves(curves, save_dir)
        ap50, ap = ap[:, 0], ap.mean(1)  # AP50, AP50-95 per class
        mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), ap.mean()
    nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, int)

    pf = '%22s' + '%11i' * 2 + '%11.3g' * 4
    LOGGER.info(pf % ('all', seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        LOGGER.warning(f'WARNING ⚠️ no labels found in {task} set, can not compute metrics without labels')
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(stats):
        for i, c in enumerate(ap_class):
            LOGGER.info(pf % (names[c], seen, nt[c], p[i], r[i], ap50[i], ap[i]))

    t = tuple(x / max(seen, 1) * 1e3 for x in dt)  # ms per image
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}' % t)

    if plots:
        confusion_matrix.plot(save_dir=save_dir, names=list(names.values()))
        _callback(callbacks, 'on_val_end', nt, tp, fp, p, r, f1, ap, ap50, ap_class, confusion_matrix)

    # COCO json + pycocotools
    internal = (float(map50), float(map_))
    if save_json and len(jdict):
        ws = weights if isinstance(weights, (list, tuple)) else [weights] if weights else []
        w = Path(ws[0]).stem if ws else ''
        pred_json = save_dir / f'{w}_predictions.json'
        LOGGER.info(f'\nEvaluating pycocotools mAP... saving {pred_json}...')
        pred_json.write_text(json.dumps(jdict))
        if anno_json is None:
            LOGGER.info("pycocotools skipped: no COCO annotations json (add 'coco_json:' to the data yaml)")
        else:
            try:
                ids = [image_id(f) for f in dataloader.dataset.im_files]
                coco = coco_evaluate(anno_json, pred_json, img_ids=ids)
                if coco is not None:
                    map_, map50 = coco.ap, coco.ap50  # as upstream: report pycocotools' numbers
            except Exception as e:  # pycocotools' own failures must not lose the computed metrics
                LOGGER.info(f'pycocotools unable to run: {e}')

    model.float()  # for training
    if not training:
        if own_dir:
            summary = metrics_summary(
                weights=weights, data=data_src, task=task, imgsz=imgsz, batch=batch_size, half=half, device=device,
                report=report, prune=prune, prune_scope=prune_scope, prune_granularity=prune_granularity,
                params=sum(x.numel() for x in model.parameters()) or None, images=seen, nt=nt, mp=mp, mr=mr,
                map50=internal[0], map50_95=internal[1], coco=coco, t=t,
                classes={names[int(c)]: (int(nt[c]), p[i], r[i], ap50[i], ap[i]) for i, c in enumerate(ap_class)})
            (save_dir / 'metrics.json').write_text(json.dumps(summary, indent=2))
        s = f"\n{len(list(save_dir.glob('labels/*.txt')))} labels saved to {save_dir / 'labels'}" if save_txt else ''
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}{s}")
    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i]
    return (float(mp), float(mr), float(map50), float(map_), *(loss.cpu() / len(dataloader)).tolist()), maps, t


def metrics_summary(weights: list[str], data: str, task: str, imgsz: int, batch: int, half: bool,
                    device: torch.device, report: SparsityReport | None, prune: float, prune_scope: str,
                    prune_granularity: str, params: int, images: int,
                    nt: np.ndarray, mp: float, mr: float, map50: float, map50_95: float, coco: CocoStats | None,
                    t: tuple[float, float, float], classes: dict[str, tuple]) -> dict[str, Any]:
    """The flat metrics.json dict described in the module docstring (fractions 0-1, times ms per image)."""
    return {
        'weights': list(weights) or [f'random-init {DEFAULT_CFG}'], 'data': data, 'task': task,
        'imgsz': imgsz, 'batch': batch, 'precision': 'fp16' if half else 'fp32', 'device': str(device),
        'images': int(images), 'instances': int(nt.sum()),
        'P': float(mp), 'R': float(mr), 'mAP50': float(map50), 'mAP50-95': float(map50_95),
        'coco_AP': coco.ap if coco else None, 'coco_AP50': coco.ap50 if coco else None,
        'coco_AR100': coco.ar100 if coco else None, 'coco_stats': list(coco.stats) if coco else None,
        'sparsity': report.prunable if report else None, 'sparsity_all': report.overall if report else None,
        'prune': prune, 'prune_scope': prune_scope, 'prune_granularity': prune_granularity, 'params': params,
        'ms_pre': t[0], 'ms_per_img': t[1], 'ms_nms': t[2],
        'classes': {k: dict(zip(('instances', 'P', 'R', 'mAP50', 'mAP50-95'), (v[0], *(float(x) for x in v[1:]))))
                    for k, v in classes.items()},
    }


# ------------------------------------------------------------------------------------------------ sparsity sweep
def sparsity_sweep(data: str | Path | dict | None = None, weights: list | str | None = None, batch_size: int = 32,
                   imgsz: int = 640, conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300,
                   device: str = '', workers: int = 8, single_cls: bool = False, half: bool = False,
                   project: str | Path = ROOT / 'runs' / 'val', name: str = 'exp', exist_ok: bool = False,
                   amounts: list[float] | None = None, scopes: tuple[str, ...] = SCOPES,
                   **kwargs: Any) -> tuple[Path, list[dict]]:
    """Pruning sensitivity: evaluate every weights file at each amount and scope, each from a fresh copy.

    One dataloader and one save_dir for the whole sweep; writes sparsity.csv (SWEEP_COLUMNS), sparsity.md and
    sparsity.png there. Returns (save_dir, rows).
    """
    device = select_device(device, batch_size=batch_size)
    if half and device.type != 'cuda':
        LOGGER.info('--half is only supported on CUDA, using FP32')
    half &= device.type == 'cuda'
    wlist = resolve_weights(weights)
    data = data_or_default(data, wlist, single_cls)
    src = str(data) if isinstance(data, (str, Path)) else ''
    data = check_dataset(data)
    amounts = [float(a) for a in (sweep_amounts() if amounts is None else amounts)]
    if any(is_exported(w) for w in wlist):
        raise ValueError('--task sparsity prunes PyTorch weights: pass the .pt file, not an export')
    bases = [(Path(w).stem, load_unfused([w], data, single_cls, src)) for w in wlist] or \
            [(f'{Path(DEFAULT_CFG).stem}-random', load_unfused([], data, single_cls))]
    stride = max(max(int(b.stride.max()) for _, b in bases), 32)
    imgsz = check_img_size(imgsz, s=stride)
    dataloader = create_dataloader(data['val'], imgsz, batch_size, stride, single_cls, pad=0.5, rect=True,
                                   workers=workers, prefix=colorstr('val: '), nc=int(data['nc']))[0]
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)

    rows = []
    for stem, base in bases:
        dense = None  # amount 0 is the same model for every scope: evaluate it once
        for scope in scopes:
            for amount in amounts:
                if amount == 0 and dense is not None:
                    rows.append({**dense, 'scope': scope})
                    continue
                LOGGER.info(f'\n{colorstr("sparsity: ")}{stem} scope={scope} amount={amount:g}')
                model, report = prepare_model(deepcopy(base), device, half, amount, scope)
                results, _, _ = run(data=data, weights=wlist, model=model, dataloader=dataloader, save_dir=save_dir,
                                    conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
                                    half=half, plots=False)
                row = dict(zip(SWEEP_COLUMNS, (stem, scope, amount, report.prunable, report.overall, *results[:4])))
                rows.append(row)
                if amount == 0:
                    dense = row
    write_sweep(rows, save_dir)
    LOGGER.info(f"\n{(save_dir / 'sparsity.md').read_text()}\nResults saved to {colorstr('bold', save_dir)}")
    return save_dir, rows


def write_sweep(rows: list[dict], save_dir: Path) -> None:
    """sparsity.csv (SWEEP_COLUMNS), sparsity.md (a GitHub table) and sparsity.png (mAP vs measured sparsity)."""
    with open(save_dir / 'sparsity.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f'{v:.5g}' if isinstance(v, float) else v) for k, v in row.items()})
    lines = ['| ' + ' | '.join(SWEEP_COLUMNS) + ' |', '|' + '---|' * len(SWEEP_COLUMNS)]
    for row in rows:
        lines.append('| ' + ' | '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in row.values()) + ' |')
    (save_dir / 'sparsity.md').write_text('\n'.join(lines) + '\n')

    from matplotlib.figure import Figure  # only when writing the plot

    fig = Figure(figsize=(10, 4), tight_layout=True)
    axes = fig.subplots(1, 2)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row['weights'], row['scope']), []).append(row)
    for ax, key in zip(axes, ('mAP50-95', 'mAP50')):
        for (stem, scope), g in groups.items():
            label = scope if len({k[0] for k in groups}) == 1 else f'{stem} {scope}'
            ax.plot([x['sparsity_prunable'] for x in g], [x[key] for x in g], marker='.', label=label)
        ax.set_xlabel('sparsity of prunable weights')
        ax.set_ylabel(key)
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(save_dir / 'sparsity.png', dpi=150)


# ------------------------------------------------------------------------------------------------ CLI


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (upstream v7.0 val.py flags plus --prune / --prune-scope)."""
    parser = argparse.ArgumentParser(description='Validate a YOLOv5 model (optionally pruned) on a data set')
    parser.add_argument('--data', type=str, default=None,
                        help="dataset.yaml path (default: the one the weights were trained on if recorded and found, "
                             f"{rel_path(COCO_DATA)} for COCO-class weights, else {rel_path(DEFAULT_DATA)})")
    parser.add_argument('--weights', nargs='+', type=str, default=None,
                        help=f'model path(s), several = ensemble (default {rel_path(DEFAULT_WEIGHTS)} if '
                             f'present, else a random-init {Path(DEFAULT_CFG).stem})')
    parser.add_argument('--batch-size', type=int_at_least(1), default=32, help='batch size')
    parser.add_argument('--imgsz', '--img', '--img-size', type=int_at_least(1), default=640, help='inference size (pixels)')
    parser.add_argument('--conf-thres', type=fraction, default=0.001, help='confidence threshold')
    parser.add_argument('--iou-thres', type=fraction, default=0.6, help='NMS IoU threshold')
    parser.add_argument('--max-det', type=int_at_least(1), default=300, help='maximum detections per image')
    parser.add_argument('--task', default='val', choices=TASKS, help='train, val, test, speed, study or sparsity')
    parser.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    parser.add_argument('--workers', type=int_at_least(0), default=8, help='max dataloader workers')
    parser.add_argument('--single-cls', action='store_true', help='treat as single-class dataset')
    parser.add_argument('--augment', action='store_true', help='augmented inference')
    parser.add_argument('--verbose', action='store_true', help='report mAP by class')
    parser.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    parser.add_argument('--save-hybrid', action='store_true', help='save label+prediction hybrid results to *.txt')
    parser.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    parser.add_argument('--save-json', action='store_true', help='save a COCO-JSON results file (+ pycocotools mAP)')
    parser.add_argument('--project', default=str(ROOT / 'runs' / 'val'), help='save to project/name')
    parser.add_argument('--name', default='exp', help='save to project/name')
    parser.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    parser.add_argument('--half', action='store_true', help='use FP16 half-precision inference (CUDA only)')
    parser.add_argument('--dnn', action='store_true', help='use OpenCV DNN for ONNX inference')
    add_prune_args(parser)
    opt = parser.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def main(opt: argparse.Namespace) -> Any:
    """Run the task; user errors end with one 'ERROR: ...' line and exit status 1.

    Without --data the data set follows the weights (default_data); the first log line says which and why.
    """
    set_logging()
    try:
        why = ''
        if opt.data is None:
            opt.data, why = default_data(resolve_weights(opt.weights), opt.single_cls)
        opt.save_json |= opt.data.endswith('coco.yaml')  # as upstream: pycocotools for COCO
        LOGGER.info(colorstr('val: ') + ', '.join(f'{k}={v}' + (f' ({why})' if k == 'data' and why else '')
                                                  for k, v in vars(opt).items()))
        if opt.task in ('train', 'val', 'test'):
            if opt.conf_thres > 0.001:
                LOGGER.info(f'WARNING ⚠️ confidence threshold {opt.conf_thres} > 0.001 produces invalid results')
            if opt.save_hybrid:
                LOGGER.info('WARNING ⚠️ --save-hybrid will return high mAP from hybrid labels, '
                            'not from predictions alone')
            return run(**vars(opt))
        if opt.task == 'sparsity':
            if opt.prune:
                LOGGER.info('--prune is ignored by --task sparsity (the sweep sets the amounts)')
            return sparsity_sweep(**vars(opt))
        weights = resolve_weights(opt.weights) or [None]
        opt.half = torch.cuda.is_available() and opt.device != 'cpu'  # FP16 for speed/study where possible
        if opt.task == 'speed':  # python val.py --task speed --batch 1 --weights yolov5n.pt yolov5s.pt
            opt.conf_thres, opt.iou_thres, opt.save_json = 0.25, 0.45, False
            return [run(**{**vars(opt), 'weights': w, 'plots': False}) for w in weights]
        # study: mAP and speed vs image size, 256 px up to --imgsz in steps of 128 (upstream: 256..1536)
        save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
        x = list(range(256, max(opt.imgsz, 256) + 1, 128))
        for w in weights:
            f = save_dir / f"study_{Path(opt.data).stem}_{Path(w).stem if w else Path(DEFAULT_CFG).stem}.txt"
            y = []
            for sz in x:
                LOGGER.info(f'\nRunning {f} --imgsz {sz}...')
                r, _, t = run(**{**vars(opt), 'weights': w, 'imgsz': sz, 'save_dir': save_dir, 'plots': False})
                y.append(r + t)
            np.savetxt(f, y, fmt='%10.4g')  # columns: P R mAP50 mAP50-95 3 losses, 3 times (ms)
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}")
        return save_dir
    except (CheckpointError, DeviceError, DownloadError, FileNotFoundError, ValueError) as e:
        LOGGER.error(f'ERROR: {e}')
        raise SystemExit(1) from None


if __name__ == '__main__':
    main(parse_opt())
