"""Step-time overhead and memory of Dynamic Network Surgery (utils/compression/weight/dns.py) on CPU, default yolov5s at 320 px.

Usage: python benchmarks/dns_bench.py [--cfg yolov5s.yaml] [--img 320] [--batch 8] [--nbs 64] [--iters 3] [--threads 1]

One optimizer step is measured the way train.py takes it: forward + backward of --nbs / --batch batches
(gradient accumulation to YOLOv5's nominal batch of 64 images; the DNS hooks run once per optimizer step, not
per batch), then the two DNS hooks around an SGD step (momentum, weight decay). A surrogate loss (mean of squared
raw outputs) stands in for the YOLO loss. Variants, each on its own copy of the same model and the same images:
- plain:        no DNS;
- dns-swap:     surgery phase, no mask update drawn (gamma huge, so sigma(k) ~ 0): the per-step cost of the swap
                (restore dense W before optimizer.step, store masked values and re-mask after it);
- dns-update:   surgery phase with a mask update every step (gamma = 0, sigma = 1): hysteresis scores, the exact
                threshold and the new masks;
- dns-frozen:   after the final cut (fine-tuning): re-mask only.
Rounds interleave the variants (plain, swap, update, frozen, plain, ...) so CPU contention hits all alike. Printed:
the median optimizer-step time per variant and the median time inside the two DNS hooks, as a fraction of the
plain optimizer step (less noisy than the difference of two step times); then the same hook times against a
single batch (as if there were no accumulation: --nbs equal to --batch), and the mean over a surgery phase of
--surgery-steps steps with the update probability sigma(k) = (1 + gamma*k)^-1.
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

from models.yolo import DetectionModel  # noqa: E402
from utils.compression.layers import SCOPES  # noqa: E402
from utils.compression.surgery import update_probability  # noqa: E402
from utils.compression.weight.dns import DNS  # noqa: E402

VARIANTS = ('plain', 'dns-swap', 'dns-update', 'dns-frozen')


def parse_opt() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cfg', default='yolov5s.yaml', help='model yaml')
    parser.add_argument('--img', type=int, default=320, help='square input size, pixels')
    parser.add_argument('--batch', type=int, default=8, help='images per forward/backward')
    parser.add_argument('--nbs', type=int, default=64, help='nominal batch: images per optimizer step (train.py: 64)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds')
    parser.add_argument('--iters', type=int, default=3, help='timed rounds (one optimizer step of every variant each)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--device', default='cpu', help="'cpu' or a CUDA device like 'cuda:0'")
    parser.add_argument('--target', type=float, default=0.5, help='DNS target sparsity')
    parser.add_argument('--scope', default='layer', choices=SCOPES)
    parser.add_argument('--gamma', type=float, default=1e-4, help='sigma(k) = (1 + gamma*k)^-1 for the average line')
    parser.add_argument('--surgery-steps', type=int, default=10000, help='surgery length for the average line')
    return parser.parse_args()


def make_variant(base: torch.nn.Module, name: str, target: float, scope: str):
    """(model, optimizer, dns or None) for one variant, on a private copy of `base`."""
    model = copy.deepcopy(base).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.937, weight_decay=5e-4, nesterov=True)
    if name == 'plain':
        return model, opt, None
    gamma = {'dns-swap': 1e12, 'dns-update': 0.0, 'dns-frozen': 0.0}[name]
    dns = DNS(model, target=target, surgery_steps=10 ** 9, scope=scope, gamma=gamma, s_init=target)
    if name == 'dns-frozen':
        dns.finish()
    return model, opt, dns


def _now(device: torch.device) -> float:
    """Wall clock (s) after pending GPU work has finished."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step(model, opt, dns, imgs, accumulate: int) -> tuple[float, float, float]:
    """One optimizer step after `accumulate` forward/backward passes; returns (step s, DNS hooks s, one batch s)."""
    d = imgs.device
    t0 = _now(d)
    for _ in range(accumulate):
        loss = sum(p.float().pow(2).mean() for p in model(imgs))
        loss.backward()
    t1 = _now(d)
    if dns:
        dns.before_step()
    t2 = _now(d)
    opt.step()
    opt.zero_grad()
    t3 = _now(d)
    if dns:
        dns.after_step()
    t4 = _now(d)
    return t4 - t0, (t2 - t1) + (t4 - t3), (t1 - t0) / accumulate + (t3 - t2)


def run(cfg: str = 'yolov5s.yaml', img: int = 320, batch: int = 8, nbs: int = 64, warmup: int = 1, iters: int = 3,
        threads: int = 1, target: float = 0.5, scope: str = 'layer', gamma: float = 1e-4,
        surgery_steps: int = 10000, device: str = 'cpu') -> dict[str, tuple[float, float]]:
    """Print and return {variant: (median optimizer-step s, median hook s)}."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    base = DetectionModel(cfg).to(dev)
    imgs = torch.rand(batch, 3, img, img, device=dev)
    accumulate = max(round(nbs / batch), 1)  # train.py's rule
    variants = {name: make_variant(base, name, target, scope) for name in VARIANTS}
    times = {name: [] for name in VARIANTS}
    for i in range(warmup + iters):
        for name, (model, opt, dns) in variants.items():
            t = step(model, opt, dns, imgs, accumulate)
            if i >= warmup:
                times[name].append(t)

    plain = statistics.median(t for t, _, _ in times['plain'])
    plain_batch = statistics.median(b for _, _, b in times['plain'])
    nparams = sum(p.numel() for p in base.parameters())
    where = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{threads} CPU thread(s)'
    print(f'{cfg} ({nparams / 1e6:.2f}M params), {img} px, batch {batch} x {accumulate} accumulated = {batch * accumulate} '
          f'images per optimizer step, {where}, {iters} timed rounds after {warmup} warmup; '
          f'DNS target {target} scope {scope}')
    print(f"{'variant':<12}{'step ms':>10}{'ratio':>8}{'hooks ms':>10}{'hooks/step':>12}{'hooks/batch':>13}")
    result = {}
    for name in VARIANTS:
        s = statistics.median(t for t, _, _ in times[name])
        h = statistics.median(h for _, h, _ in times[name])
        result[name] = (s, h)
        print(f'{name:<12}{s * 1e3:>10.1f}{s / plain:>8.3f}{h * 1e3:>10.1f}{h / plain:>12.2%}{h / plain_batch:>13.2%}')
    print(f'(hooks/step: against the plain optimizer step of {batch * accumulate} images; hooks/batch: against one '
          f'plain batch of {batch} images plus the SGD step ({plain_batch * 1e3:.1f} ms), i.e. without accumulation)')

    swap, update = result['dns-swap'][1], result['dns-update'][1] - result['dns-swap'][1]
    mean_sigma = sum(update_probability(k, gamma, 1.0) for k in range(1, surgery_steps + 1)) / surgery_steps
    print(f'average surgery overhead for {surgery_steps} steps, gamma {gamma} (mean sigma {mean_sigma:.2f}): '
          f'swap + mean(sigma) * update = {(swap + mean_sigma * update) / plain:.2%} of the plain optimizer step, '
          f'{(swap + mean_sigma * update) / plain_batch:.1%} of a single batch; '
          f'frozen masks {result["dns-frozen"][1] / plain:.2%}')

    dns = variants['dns-swap'][2]
    mb = 2 ** 20
    masks = sum(t.numel() * t.element_size() for t in dns.off + dns.keep) / mb
    dense = sum(t.numel() * t.element_size() for t in dns.dense) / mb
    state = dns.state_dict()
    compact = sum(t.numel() * t.element_size() for part in ('masks', 'pruned_values') for t in state[part].values())
    print(f'extra memory: masks {masks:.1f} MB (float + bool) + dense copies {dense:.1f} MB during surgery '
          f'({masks:.1f} MB once frozen), over {sum(off.numel() for off in dns.off) / 1e6:.2f}M managed weights; '
          f'state_dict {compact / mb:.1f} MB (bool masks + masked values)')
    return result


def main(opt: argparse.Namespace) -> None:
    run(**vars(opt))


if __name__ == '__main__':
    main(parse_opt())
