"""Train a YOLOv5 detector on a data set; optionally learn sparse weights with Dynamic Network Surgery (--dns).

Usage (flags, output folders and numbers as upstream YOLOv5 v7.0):
    python train.py                                            # yolov5n from scratch on the embedded shapes set
    python train.py --data coco128.yaml --weights yolov5s.pt --img 640
    python train.py --resume                                   # continue the latest run under --project
    python train.py --weights best.pt --dns --target-sparsity 0.5    # fine-tune into a 50% sparse model
    python train.py --weights sparse.pt --share-bits 4 --epochs 1     # share 16 values per layer, tune the centroids
    python -m torch.distributed.run --nproc_per_node 2 train.py --batch-size 32 ...   # DDP (NCCL, or gloo on CPU)

Outputs in runs/train/exp*/: weights/last.pt and best.pt, results.csv, results.png, labels.jpg,
train_batch0..2.jpg, hyp.yaml and opt.yaml.

Project defaults that differ from upstream, so that `python train.py` finishes on a laptop CPU:
--weights '' (from scratch) with --cfg models/yolov5n.yaml, --data data/shapes.yaml, --epochs 30, --imgsz 256.
Not implemented: --evolve (error), --batch-size -1 AutoBatch (error), --quad (ignored with a note), --bucket.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from copy import deepcopy
from pathlib import Path

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import val as validate  # for end-of-epoch mAP
from models.experimental import attempt_load
from models.yolo import DetectionModel
from utils.autoanchor import check_anchors
from utils.checkpoint import CheckpointError, load, strip_optimizer
from utils.cli import float_in, int_at_least
from utils.compression.channel.pruning import pruned_model_for_training, resized_layers
from utils.compression.hooks import TrainingHooks
from utils.compression.options import add_method_args, check_dns_opt, check_share_opt
from utils.compression.training import make_hooks
from utils.data_yaml import check_dataset
from utils.dataloaders import create_dataloader
from utils.labels import labels_to_class_weights
from utils.downloads import DownloadError, attempt_download
from utils.general import (LOGGER, ROOT, check_img_size, colorstr, increment_path, intersect_dicts, set_logging,
                           yaml_load, yaml_save)
from utils.loss import ComputeLoss, scale_loss_gains
from utils.metrics import fitness
from utils.plots import plot_images, plot_labels, plot_results
from utils.torch_utils import (DeviceError, EarlyStopping, ModelEMA, de_parallel, device_info, init_seeds,
                               select_device, smart_optimizer, sparsity, torch_distributed_zero_first)
from utils.train_utils import (Interrupted, StopSignal, TrainingError, any_rank, append_results, ddp_env, freeze_layers,
                               latest_run, lr_lambda, multi_scale, opt_dict, restore_training_state, resume_opt,
                               save_training_checkpoint, warmup, warmup_accumulate)

TQDM_BAR_FORMAT = '{l_bar}{bar:10}{r_bar}'
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr', 'box',
            'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate',
            'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup')


def train(hyp: dict | str | Path, opt: argparse.Namespace, device: torch.device, stop: StopSignal | None = None):
    """Train with options ``opt`` (see parse_opt); returns the last validation results (P, R, mAP50, mAP, 3 losses).

    ``stop`` is the signal flag main() installs; on a signal, last.pt is saved and Interrupted is raised.
    """
    local_rank, rank, world_size = ddp_env()
    main_rank = rank in {-1, 0}
    save_dir, epochs, batch_size, resume = Path(opt.save_dir), opt.epochs, opt.batch_size, opt.resume
    w = save_dir / 'weights'
    last, best = w / 'last.pt', w / 'best.pt'
    stop = stop or StopSignal()

    # Hyperparameters and run settings
    hyp = load_hyp(hyp)
    opt.hyp = dict(hyp)  # unscaled, saved with the run; --resume trains with these
    if main_rank:
        save_run_settings(save_dir, hyp, opt)
    plots, cuda = not opt.noplots, device.type == 'cuda'
    amp = cuda  # mixed precision only where it pays off (and GradScaler is supported)
    init_seeds(opt.seed + 1 + rank, deterministic=True)
    with torch_distributed_zero_first(local_rank):  # rank 0 generates/checks the data set first
        data_dict = check_data(opt.data)
    nc = 1 if opt.single_cls else data_dict['nc']
    names = {0: 'item'} if opt.single_cls and len(data_dict['names']) != 1 else data_dict['names']

    # Model, frozen layers, image size
    model, ckpt = build_model(opt.weights, opt.cfg, hyp, nc, device, local_rank, resume)
    for name in freeze_layers(model, opt.freeze):
        LOGGER.info(f'freezing {name}')
    gs = max(int(model.stride.max()), 32)  # grid size (max stride)
    imgsz = check_img_size(opt.imgsz, gs, floor=gs * 2)

    # Optimizer: gradients of ~nbs images per step; weight decay scaled to the images actually per step
    nbs = 64  # nominal batch size
    accumulate = max(round(nbs / batch_size), 1)
    optimizer, lf, scheduler = build_optimizer(model, opt, hyp, nbs)
    ema = ModelEMA(model) if main_rank else None
    best_fitness, start_epoch = 0.0, 0
    if resume:
        best_fitness, start_epoch, epochs = restore_training_state(ckpt, optimizer, ema, opt.weights, epochs, resume)
    if opt.sync_bn and cuda and rank != -1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
        LOGGER.info('Using SyncBatchNorm()')

    train_loader, dataset, val_loader = build_loaders(data_dict, imgsz, gs, hyp, opt, local_rank, world_size,
                                                          main_rank)
    if main_rank and not resume:
        if not opt.noautoanchor:
            check_anchors(dataset, model=model, thr=hyp['anchor_t'], imgsz=imgsz)
        model.half().float()  # pre-reduce anchor precision (as upstream)
        if plots:
            plot_labels(np.concatenate(dataset.labels, 0), names, save_dir)
    if rank != -1:  # DDP: identical weights everywhere (broadcast from rank 0), gradients all-reduced
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None,
                                                    output_device=local_rank if cuda else None, static_graph=True)

    m = de_parallel(model)
    hyp = set_model_attributes(m, hyp, nc, names, imgsz, dataset.labels, opt.label_smoothing)

    # Compression methods (DNS, channel DNS, slimming, weight sharing): one hook per point of the loop
    nb = len(train_loader)  # batches per epoch
    nw = max(round(hyp['warmup_epochs'] * nb), 100)  # warmup iterations
    hooks = make_hooks(model, opt, nb, nw, nbs, ckpt if resume else None, ema)
    del ckpt

    # Training
    t0 = time.time()
    last_opt_step = -1
    maps = np.zeros(nc)  # mAP per class
    results = (0, 0, 0, 0, 0, 0, 0)  # P, R, mAP@.5, mAP@.5-.95, val_loss(box, obj, cls)
    scheduler.last_epoch = start_epoch - 1  # scheduler.step() at the end of epoch e sets epoch e+1's LR
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    stopper, stop_early = EarlyStopping(patience=opt.patience), False
    compute_loss = ComputeLoss(m)
    val_kw = dict(batch_size=batch_size // world_size * 2, imgsz=imgsz, half=amp, single_cls=opt.single_cls,
                  dataloader=val_loader, save_dir=save_dir, compute_loss=compute_loss)
    if main_rank:
        LOGGER.info(f'Image sizes {imgsz} train, {imgsz} val\n'
                    f'Using {train_loader.num_workers * world_size} dataloader workers\n'
                    f"Logging results to {colorstr('bold', save_dir)}\n"
                    f'Starting training for {epochs} epochs...')
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        if opt.image_weights:  # sample images of poorly detected classes more often
            dataset.update_image_weights(m.class_weights.cpu().numpy() * (1 - maps) ** 2 / nc)
        if rank != -1:
            train_loader.sampler.set_epoch(epoch)
        mloss = torch.zeros(3, device=device)  # mean losses
        pbar = enumerate(train_loader)
        extra = list(hooks.progress())  # method columns of the progress bar (DNS: sparsity)
        if main_rank:
            LOGGER.info(('\n' + '%11s' * (7 + len(extra))) % ('Epoch', 'GPU_mem', 'box_loss', 'obj_loss', 'cls_loss',
                                                             'Instances', 'Size', *extra))
            pbar = tqdm(pbar, total=nb, bar_format=TQDM_BAR_FORMAT)
        optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            ni = i + nb * epoch  # iterations since the start of training
            imgs = imgs.to(device, non_blocking=True).float() / 255
            if ni <= nw:
                accumulate = warmup_accumulate(ni, nw, nbs, batch_size)
                warmup(optimizer, ni, nw, lf(epoch), hyp)
            if opt.multi_scale:
                imgs = multi_scale(imgs, imgsz, gs)

            with torch.amp.autocast(device.type, enabled=amp):
                pred = model(imgs)
                loss, loss_items = compute_loss(pred, targets.to(device))  # loss = mean loss * batch size
                loss = loss * world_size  # DDP averages gradients over ranks
            # Every rank stops at the same iteration, before a bad loss reaches the weights
            interrupted, diverged = any_rank([stop.received is not None, not torch.isfinite(loss).all()], device,
                                             world_size)
            if interrupted or diverged:
                if main_rank:
                    pbar.close()
                if diverged:
                    raise TrainingError(f'non-finite loss at epoch {epoch} iteration {i}; ' + (
                        f'last good checkpoint kept at {last}' if last.exists() else 'no checkpoint was saved yet'))
                save_interrupted(last, model, ema, optimizer, epoch, i, best_fitness, opt, hooks)
                raise Interrupted(stop.received or signal.SIGTERM, f'Training interrupted at epoch {epoch} iteration '
                                  f'{i}; saved {last}; continue with: python train.py --resume {last}')
            scaler.scale(loss).backward()

            if ni - last_opt_step >= accumulate:  # one optimizer step; hook order: utils/compression/hooks.py
                scaler.unscale_(optimizer)  # true gradients for the hooks and for clipping
                hooks.on_gradients()  # weight sharing: grad <- the cluster's step (clipped below, as taken)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                hooks.before_step()  # slimming: + lambda * sign(gamma); DNS: parameters <- dense W
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                hooks.after_step()  # DNS: maybe update masks, W <- W * T; sharing: weights <- codebook[index]
                if ema:
                    ema.update(model)
                last_opt_step = ni

            if main_rank:
                mloss = (mloss * i + loss_items) / (i + 1)
                mem = f'{torch.cuda.memory_reserved() / 1E9 if torch.cuda.is_available() else 0:.3g}G'
                pbar.set_description(('%11s' * 2 + '%11.4g' * (5 + len(extra))) %
                                     (f'{epoch}/{epochs - 1}', mem, *mloss, targets.shape[0], imgs.shape[-1],
                                      *hooks.progress().values()))
                if plots and ni < 3:
                    plot_images(imgs, targets, paths, save_dir / f'train_batch{ni}.jpg', names=names)

        lr = [x['lr'] for x in optimizer.param_groups]  # for results.csv
        scheduler.step()
        hooks.end_epoch(epoch)  # DNS: the surgery phase ends -> exact cut to the target, masks frozen

        if main_rank:
            ema.update_attr(model, include=['yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights'])
            hooks.apply_to(ema.ema)  # evaluate and save what the method allows (EMA * T, 2^B values per layer)
            final_epoch = epoch + 1 == epochs or epoch - stopper.best_epoch >= stopper.patience
            if not opt.noval or final_epoch:
                results, maps, _ = validate.run(data_dict, model=ema.ema, plots=False, **val_kw)
            fi = float(fitness(np.array(results).reshape(1, -1))[0])
            stop_early = stopper(epoch=epoch, fitness=fi)
            best_fitness = max(best_fitness, fi)
            append_results(save_dir / 'results.csv', epoch, [*mloss.tolist(), *results, *lr],
                           hooks.epoch_columns(ema.ema) or None)
            if not opt.nosave or final_epoch:
                files = [last] + [best] * (best_fitness == fi)
                files += [w / f'epoch{epoch}.pt'] * (opt.save_period > 0 and epoch % opt.save_period == 0)
                save_training_checkpoint(files, model, ema, optimizer, epoch, best_fitness, opt, **hooks.state_dict())

        if rank != -1:  # every rank stops early together (rank 0 decides)
            decision = [stop_early]
            dist.broadcast_object_list(decision, 0)
            stop_early = decision[0]
        if stop_early:
            break

    if main_rank:
        LOGGER.info(f'\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.')
        results = finish_training(last, best, hooks, data_dict, device, plots, save_dir, val_kw) or results
    if cuda:
        torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------- train() parts
def load_hyp(hyp: dict | str | Path) -> dict:
    """Hyperparameters from a dict or a YAML (a bare name is looked up in data/hyps/); missing keys -> error."""
    if not isinstance(hyp, dict):
        p = Path(hyp)
        p = next((c for c in (p, ROOT / 'data' / 'hyps' / p.name) if c.is_file()), p)
        if not p.is_file():
            raise TrainingError(f"hyperparameter file '{hyp}' not found (looked in . and {ROOT / 'data' / 'hyps'})")
        hyp = yaml_load(p)
    missing = [k for k in HYP_KEYS if k not in hyp]
    if missing:
        raise TrainingError(f"hyperparameters lack {', '.join(missing)}; start from data/hyps/hyp.scratch-low.yaml")
    return dict(hyp)


def check_data(data: str | dict) -> dict:
    """check_dataset with its errors turned into one-line TrainingErrors."""
    try:
        return check_dataset(data, splits=('train', 'val'))  # downloads both when the yaml lists archives
    except (ValueError, FileNotFoundError) as e:
        raise TrainingError(str(e)) from None


def build_model(weights: str, cfg: str, hyp: dict, nc: int, device: torch.device, local_rank: int,
                resume: bool) -> tuple[DetectionModel, dict | None]:
    """A DetectionModel from ``cfg`` (or the checkpoint's YAML) with the matching weights of ``weights`` transferred.

    Returns (model, checkpoint dict or None when training from scratch). Anchors are not transferred when
    ``cfg`` or hyp['anchors'] define them anew (unless resuming).
    """
    try:
        if not weights:
            LOGGER.info(f"Training {Path(cfg).name} from scratch (no --weights given; pass --weights yolov5n.pt "
                        f"or a .pt of yours to fine-tune)")
            return DetectionModel(cfg, ch=3, nc=nc, anchors=hyp.get('anchors')).to(device), None
        if not str(weights).endswith('.pt'):
            raise TrainingError(f"--weights must be a .pt file or '' (train from scratch), got '{weights}'")
        with torch_distributed_zero_first(local_rank):  # rank 0 downloads an official asset first
            weights = attempt_download(weights)
        ckpt = load(weights)
        src = ckpt.get('model')
        if not isinstance(src, DetectionModel):
            raise TrainingError(f'{weights} holds no YOLOv5 DetectionModel under "model"')
        model = DetectionModel(cfg or deepcopy(src.yaml), ch=3, nc=nc, anchors=hyp.get('anchors')).to(device)
    except (ValueError, FileNotFoundError) as e:  # bad model YAML, missing cfg or weights file
        raise TrainingError(str(e)) from None
    narrower = 0 if cfg else resized_layers(src, model)
    if narrower:  # channel-pruned: train its own (smaller) structure; --cfg would rebuild the full-width model
        LOGGER.info(f'{weights} is channel-pruned ({narrower} layers narrower than its YAML): training its own '
                    f'structure')
        return pruned_model_for_training(src, nc).to(device), ckpt
    exclude = ['anchor'] if (cfg or hyp.get('anchors')) and not resume else []
    csd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=exclude)
    model.load_state_dict(csd, strict=False)
    LOGGER.info(f'Transferred {len(csd)}/{len(model.state_dict())} items from {weights}')
    return model, ckpt


def save_run_settings(save_dir: Path, hyp: dict, opt: argparse.Namespace) -> None:
    """Create weights/, log the hyperparameters and write hyp.yaml and opt.yaml (rank 0)."""
    (save_dir / 'weights').mkdir(parents=True, exist_ok=True)
    LOGGER.info(colorstr('hyperparameters: ') + ', '.join(f'{k}={v}' for k, v in hyp.items()))
    yaml_save(save_dir / 'hyp.yaml', hyp)
    yaml_save(save_dir / 'opt.yaml', opt_dict(opt))


def build_optimizer(model: nn.Module, opt: argparse.Namespace, hyp: dict, nbs: int) -> tuple:
    """(optimizer, LR factor per epoch, LambdaLR scheduler); hyp['weight_decay'] is scaled, in place, to the images
    per optimizer step (``nbs`` nominal, as upstream)."""
    accumulate = max(round(nbs / opt.batch_size), 1)
    hyp['weight_decay'] *= opt.batch_size * accumulate / nbs
    optimizer = smart_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
    lf = lr_lambda(opt.epochs, hyp['lrf'], opt.cos_lr)
    return optimizer, lf, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)


def set_model_attributes(m: DetectionModel, hyp: dict, nc: int, names: dict, imgsz: int, labels: list,
                         label_smoothing: float) -> dict:
    """Attach nc, names, class weights and the hyperparameters (loss gains scaled to the output levels, classes
    and image size) to the bare model; returns the scaled hyperparameters."""
    hyp = scale_loss_gains(hyp, m.model[-1].nl, nc, imgsz)
    hyp['label_smoothing'] = label_smoothing
    m.nc, m.hyp, m.names = nc, hyp, names
    m.class_weights = labels_to_class_weights(labels, nc).to(next(m.parameters()).device) * nc
    return hyp


def build_loaders(data_dict: dict, imgsz: int, gs: int, hyp: dict, opt: argparse.Namespace, local_rank: int,
                  world_size: int, main_rank: bool) -> tuple:
    """(train loader, train data set, val loader or None off rank 0); batch sizes per rank, val at twice train's."""
    batch = opt.batch_size // world_size
    train_loader, dataset = create_dataloader(data_dict['train'], imgsz, batch, gs, opt.single_cls, hyp=hyp,
                                              augment=True, cache=opt.cache, rect=opt.rect, rank=local_rank,
                                              workers=opt.workers, image_weights=opt.image_weights,
                                              prefix=colorstr('train: '), shuffle=True, seed=opt.seed,
                                              nc=data_dict['nc'])  # the yaml's nc, also with --single-cls
    val_loader = None
    if main_rank:
        val_loader = create_dataloader(data_dict['val'], imgsz, batch * 2, gs, opt.single_cls, hyp=hyp,
                                       cache=None if opt.noval else opt.cache, rect=True, rank=-1,
                                       workers=opt.workers * 2, pad=0.5, prefix=colorstr('val: '),
                                       nc=data_dict['nc'])[0]
    return train_loader, dataset, val_loader


def finish_training(last: Path, best: Path, hooks: TrainingHooks, data_dict: dict, device: torch.device,
                    plots: bool, save_dir: Path, val_kw: dict) -> tuple | None:
    """Rank 0 after the last epoch: method reports, strip the optimizers (and let the methods finish the files),
    validate best.pt with the per-class table, plot results.csv. Returns best.pt's results (None without it)."""
    report = hooks.final_report()
    if report:
        LOGGER.info(report)
    results = None
    for f in last, best:
        if not f.exists():
            continue
        strip_optimizer(f)
        line = hooks.finish_file(f)  # channel DNS: masked channels removed, a physically smaller model
        if line:
            LOGGER.info(line)
        if f is best:
            LOGGER.info(f'\nValidating {f}...')
            model_best = attempt_load(f, device)
            LOGGER.info(f'{colorstr("sparsity: ")}{sparsity(model_best)}')
            is_coco = str(data_dict['val']).replace('\\', '/').endswith('coco/val2017.txt')
            results, _, _ = validate.run(data_dict, model=model_best, iou_thres=0.65 if is_coco else 0.60,
                                         save_json=is_coco, verbose=True, plots=plots, **val_kw)
    if plots:
        plot_results(file=save_dir / 'results.csv')
    LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}")
    return results


def save_interrupted(last: Path, model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
                     epoch: int, i: int, best_fitness: float, opt: argparse.Namespace, hooks: TrainingHooks) -> None:
    """Rank 0 saves the state after the last completed iteration as last.pt.

    It is recorded as the end of epoch-1, so --resume re-runs epoch ``epoch`` (from these weights).
    """
    if ema is None:
        return
    ema.update_attr(model, include=['yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights'])
    hooks.apply_to(ema.ema)
    save_training_checkpoint([last], model, ema, optimizer, epoch - 1, best_fitness, opt,
                             interrupted={'epoch': epoch, 'iteration': i}, **hooks.state_dict())


# ---------------------------------------------------------------------------------------------- CLI
def _batch_size(s: str) -> int:
    v = int(s)
    if v == -1:
        raise argparse.ArgumentTypeError('-1 (AutoBatch) is not supported; pass a batch size, e.g. 16')
    if v < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {s}')
    return v


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: upstream v7.0's names and meanings (project defaults), then the compression groups."""
    parser = argparse.ArgumentParser(description='Train YOLOv5 (optionally sparse: --dns, channel DNS, --slim, '
                                                 '--share-bits)')
    add = parser.add_argument_group('training (as upstream YOLOv5 v7.0)').add_argument
    add('--weights', type=str, default='', help="initial weights path; '' trains from scratch")
    add('--cfg', type=str, default='', help='model.yaml path (default models/yolov5n.yaml without --weights)')
    add('--data', type=str, default=str(ROOT / 'data/shapes.yaml'), help='dataset.yaml path')
    add('--hyp', type=str, default=str(ROOT / 'data/hyps/hyp.scratch-low.yaml'), help='hyperparameters path')
    add('--epochs', type=int_at_least(1), default=30, help='total training epochs')
    add('--batch-size', type=_batch_size, default=16, help='total batch size for all ranks')
    add('--imgsz', '--img', '--img-size', type=int_at_least(1), default=256, help='train, val image size (pixels)')
    add('--rect', action='store_true', help='rectangular training')
    add('--resume', nargs='?', const=True, default=False, help='resume most recent training (or the given last.pt)')
    add('--nosave', action='store_true', help='only save final checkpoint')
    add('--noval', action='store_true', help='only validate final epoch')
    add('--noautoanchor', action='store_true', help='disable AutoAnchor')
    add('--noplots', action='store_true', help='save no plot files')
    add('--evolve', type=int, nargs='?', const=300, help='hyperparameter evolution: NOT IMPLEMENTED (error)')
    add('--bucket', type=str, default='', help='gsutil bucket (ignored)')
    add('--cache', type=str, nargs='?', const='ram', choices=['ram', 'disk'], help='--cache images in ram or disk')
    add('--image-weights', action='store_true', help='use weighted image selection for training')
    add('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    add('--multi-scale', action='store_true', help='vary img-size +/- 50%%')
    add('--single-cls', action='store_true', help='train multi-class data as single-class')
    add('--optimizer', type=str, choices=['SGD', 'Adam', 'AdamW'], default='SGD', help='optimizer')
    add('--sync-bn', action='store_true', help='use SyncBatchNorm, only available in CUDA DDP mode')
    add('--workers', type=int_at_least(0), default=8, help='max dataloader workers (per RANK in DDP mode)')
    add('--project', default=str(ROOT / 'runs/train'), help='save to project/name')
    add('--name', default='exp', help='save to project/name')
    add('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    add('--quad', action='store_true', help='quad dataloader (accepted, not implemented)')
    add('--cos-lr', action='store_true', help='cosine LR scheduler')
    add('--label-smoothing', type=float_in(0, 1, hi_open=True), default=0.0, help='Label smoothing epsilon')
    add('--patience', type=int_at_least(0), default=100, help='EarlyStopping patience (epochs without improvement)')
    add('--freeze', nargs='+', type=int_at_least(0), default=[0], help='Freeze layers: backbone=10, first3=0 1 2')
    add('--save-period', type=int, default=-1, help='Save checkpoint every x epochs (disabled if < 1)')
    add('--seed', type=int, default=0, help='Global training seed')
    add('--local_rank', '--local-rank', type=int, default=-1, help='DDP parameter, do not modify')
    add = parser.add_argument_group("upstream's logger flags (accepted and ignored: no W&B/ClearML/Comet)").add_argument
    add('--entity', default=None, help='ignored')
    add('--upload_dataset', nargs='?', const=True, default=False, help='ignored')
    add('--bbox_interval', type=int, default=-1, help='ignored')
    add('--artifact_alias', type=str, default='latest', help='ignored')
    add_method_args(parser)
    return parser.parse_args(argv)


def resolve_opt(opt: argparse.Namespace) -> argparse.Namespace:
    """The options to train with: a resumed run's own options, or the command line's, checked."""
    if opt.resume:
        last = Path(opt.resume) if isinstance(opt.resume, str) else latest_run(opt.project)
        if last is None or not last.is_file():
            where = opt.resume if isinstance(opt.resume, str) else f'no last.pt under {opt.project}'
            raise TrainingError(f'--resume checkpoint not found: {where}')
        opt = resume_opt(load(last), last, parse_opt([]))
        return opt
    if opt.evolve is not None:
        raise TrainingError('--evolve (hyperparameter evolution) is not implemented in this project; '
                            'train with a fixed --hyp file instead')
    if opt.quad:
        LOGGER.info('--quad is not implemented: training with the standard 1-image collate')
    if not opt.cfg and not opt.weights:
        opt.cfg = str(ROOT / 'models' / 'yolov5n.yaml')
    check_dns_opt(opt)
    check_share_opt(opt)
    opt.data, opt.cfg, opt.hyp, opt.weights, opt.project = (str(x) for x in (opt.data, opt.cfg, opt.hyp, opt.weights,
                                                                             opt.project))
    opt.save_dir = ''  # set in main() on rank 0
    return opt


def main(opt: argparse.Namespace) -> None:
    """Resolve options, set up DDP if launched by torch.distributed.run, train; user errors end as one line."""
    local_rank, rank, world_size = ddp_env()
    set_logging(rank=rank)
    try:
        opt = resolve_opt(opt)
        device = select_device(opt.device, batch_size=opt.batch_size)
        LOGGER.info(device_info(device))
        if local_rank != -1:
            msg = 'is not compatible with YOLOv5 multi-process DDP training'
            if opt.image_weights:
                raise TrainingError(f'--image-weights {msg}')
            if opt.batch_size % world_size:
                raise TrainingError(f'--batch-size {opt.batch_size} must be a multiple of WORLD_SIZE {world_size}')
            if device.type == 'cuda':
                if torch.cuda.device_count() <= local_rank:
                    raise TrainingError('insufficient CUDA devices for DDP command')
                torch.cuda.set_device(local_rank)
                device = torch.device('cuda', local_rank)
            dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
        if not opt.resume:  # rank 0 picks the run folder, the others use the same one
            folder = [str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)) if rank <= 0 else '']
            if world_size > 1:
                dist.broadcast_object_list(folder, 0)
            opt.save_dir = folder[0]
        LOGGER.info(colorstr('train: ') + ', '.join(f'{k}={v}' for k, v in vars(opt).items() if k != 'hyp'))
        with StopSignal() as stop:
            train(opt.hyp, opt, device, stop)
    except Interrupted as e:
        LOGGER.warning(str(e))
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's checkpoint was pending
        LOGGER.warning('Interrupted: the last checkpoint written before the interrupt is kept')
        raise SystemExit(128 + signal.SIGINT) from None
    except (TrainingError, CheckpointError, DownloadError, DeviceError, FileNotFoundError) as e:
        raise SystemExit(f'ERROR: {e}') from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run(**kwargs) -> None:
    """Train from Python with keyword options, e.g. run(data='shapes.yaml', imgsz=64, epochs=1)."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    main(opt)


if __name__ == '__main__':
    main(parse_opt())
