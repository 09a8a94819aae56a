"""Seconds per training iteration of train.py's step on CPU: by default yolov5s at 320 px, batch 8, shapes data.

Usage: python benchmarks/train_bench.py [--cfg yolov5s.yaml] [--img 320] [--batch 8] [--iters 5] [--threads 0]
                                       [--dns 0.5]

One iteration is what train.py does per batch: uint8 -> float, forward, ComputeLoss, backward, gradient clipping,
SGD step (every iteration, no accumulation), EMA update. Batches come from the real training loader (mosaic
augmentation, hyp.scratch-low) and are fetched before timing, so loading is reported on its own line.
With --dns S a second copy runs the same step with the DNS hooks (surgery phase, a mask update every step, the
worst case), interleaved with the plain step so that CPU contention hits both alike; the ratio is printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from models.yolo import DetectionModel  # noqa: E402
from utils.data_yaml import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader
from utils.general import yaml_load  # noqa: E402
from utils.loss import ComputeLoss, scale_loss_gains  # noqa: E402
from utils.torch_utils import ModelEMA, smart_optimizer  # noqa: E402


def parse_opt() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', default='yolov5s.yaml', help='model yaml')
    parser.add_argument('--img', type=int, default=320, help='training image size, pixels')
    parser.add_argument('--batch', type=int, default=8, help='images per iteration')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations per variant')
    parser.add_argument('--iters', type=int, default=5, help='timed iterations per variant')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = torch default)')
    parser.add_argument('--dns', type=float, default=0.0, help='also time the step with DNS at this target sparsity')
    return parser.parse_args()


class Trainer:
    """One model with its optimizer, EMA, loss and (optionally) DNS, stepping like train.py."""

    def __init__(self, model: nn.Module, hyp: dict, dns_target: float = 0.0):
        self.model = model.train()
        self.optimizer = smart_optimizer(model, 'SGD', hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
        self.ema = ModelEMA(model)
        self.compute_loss = ComputeLoss(model)
        self.dns = None
        if dns_target:
            from utils.compression.weight.dns import DNS
            self.dns = DNS(model, target=dns_target, surgery_steps=10 ** 6, gamma=0.0)  # sigma = 1: update every step

    def step(self, imgs: torch.Tensor, targets: torch.Tensor) -> float:
        """One training iteration; returns its wall time in seconds."""
        t = time.perf_counter()
        loss, _ = self.compute_loss(self.model(imgs.float() / 255), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        if self.dns:
            self.dns.before_step()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.dns:
            self.dns.after_step()
        self.ema.update(self.model)
        return time.perf_counter() - t


def main(opt: argparse.Namespace) -> None:
    if opt.threads:
        torch.set_num_threads(opt.threads)
    torch.manual_seed(0)
    data = check_dataset('shapes.yaml')
    hyp = yaml_load(ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml')
    model = DetectionModel(opt.cfg, nc=data['nc'])
    hyp = scale_loss_gains(hyp, model.model[-1].nl, data['nc'], opt.img)
    model.hyp = hyp
    loader, _ = create_dataloader(data['train'], opt.img, opt.batch, 32, hyp=hyp, augment=True, shuffle=True,
                                  workers=0, nc=data['nc'])
    n = opt.warmup + opt.iters
    t = time.perf_counter()
    it = iter(loader)
    batches = [next(it)[:2] for _ in range(n)]
    load_s = (time.perf_counter() - t) / n

    trainers = {'plain': Trainer(model, hyp)}
    if opt.dns:
        trainers['dns'] = Trainer(copy.deepcopy(model), hyp, opt.dns)
    times = {k: [] for k in trainers}
    for i, (imgs, targets) in enumerate(batches):
        for k, tr in trainers.items():  # interleaved: contention from other processes hits every variant
            dt = tr.step(imgs, targets)
            if i >= opt.warmup:
                times[k].append(dt)

    print(f'{opt.cfg} {opt.img}px batch {opt.batch}, torch {torch.__version__} CPU, {torch.get_num_threads()} threads, '
          f'{opt.iters} timed iterations (after {opt.warmup} warm-up)')
    print(f'data loading (1 process, mosaic): {load_s:.3f} s/batch')
    plain = statistics.median(times['plain'])
    for k, v in times.items():
        ratio = '' if k == 'plain' else f'  ({statistics.median(v) / plain:.2f}x plain)'
        print(f'train step {k:<6} {statistics.median(v):.3f} s/it median, min {min(v):.3f}, max {max(v):.3f}{ratio}')


if __name__ == '__main__':
    main(parse_opt())
