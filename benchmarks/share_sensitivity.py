"""Where does weight sharing lose accuracy? One-shot sharing of a sparse model, layer by layer, on the embedded set.

Usage: python benchmarks/share_sensitivity.py --weights sparse.pt [--data data/shapes.yaml] [--img 256] [--bits 4]
       [--bn-batches 16] [--per-layer]

Prints mAP50-95 (val split, FP32, CPU) of:
- the model as given, and all Conv weights shared one-shot at --bits (k-means, linear init, zeros kept: what
  train.py --share-bits starts from);
- the same followed by BatchNorm re-estimation (running statistics recomputed on --bn-batches training batches,
  no augmentation, no gradient): how much of the loss is the BN statistics' shift;
- all layers shared except one family (the first conv, the Detect output convs, the 3x3 convs, the 1x1 convs)
  and each family shared alone: which layers carry the loss;
- with --per-layer: every layer shared alone, sorted by the drop (about 4 s per layer here).
Each line also gives the share of the non-zero weights the shared layers hold (what more bits for them would cost).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import val  # noqa: E402
from utils.checkpoint import load, release_checkpoint  # noqa: E402
from utils.compression.deep.sharing import kmeans_1d  # noqa: E402
from utils.compression.layers import prunable_layers  # noqa: E402
from utils.data_yaml import check_dataset  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402


@torch.no_grad()
def share_layers(model: nn.Module, names: set[str], bits: int) -> None:
    """Replace the non-zero weights of the named layers by their 2^bits k-means centroids (in place)."""
    for name, m in prunable_layers(model):
        if name in names:
            w = m.weight
            keep = w != 0
            centroids, assignment = kmeans_1d(w[keep], 1 << bits)
            w[keep] = centroids[assignment].to(w.dtype)


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader, batches: int) -> None:
    """BatchNorm running statistics <- their cumulative average over ``batches`` training batches (eval mode after)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i, (imgs, *_) in enumerate(loader):
        if i >= batches:
            break
        model(imgs.float() / 255)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def main(opt: argparse.Namespace) -> None:
    torch.manual_seed(0)
    data = check_dataset(opt.data)
    base = release_checkpoint(load(opt.weights))['model'].float().eval()
    stride = int(base.stride.max())
    val_loader = create_dataloader(data['val'], opt.img, 32, stride, rect=True, pad=0.5, workers=1,
                                   nc=int(data['nc']))[0]
    train_loader = create_dataloader(data['train'], opt.img, 16, stride, workers=1, shuffle=True,
                                     nc=int(data['nc']))[0]
    layers = [name for name, _ in prunable_layers(base)]
    nnz = {name: int((m.weight != 0).sum()) for name, m in prunable_layers(base)}
    total = sum(nnz.values())
    tmp = Path(tempfile.mkdtemp())

    def score(model: nn.Module) -> float:
        results = val.run(data=data, model=model, dataloader=val_loader, half=False, plots=False, save_dir=tmp,
                          imgsz=opt.img)[0]
        return float(results[3])

    def shared(names: set[str], bn: bool = False) -> nn.Module:
        m = copy.deepcopy(base)
        share_layers(m, names, opt.bits)
        if bn:
            reestimate_bn(m, train_loader, opt.bn_batches)
        return m

    ref = score(base)
    rows = [('not shared', 0.0, ref)]

    def add(label: str, names: set[str], bn: bool = False) -> None:
        rows.append((label, sum(nnz[n] for n in names) / total, score(shared(names, bn))))
        print(f'{label:<52}{rows[-1][1]:>10.1%}{rows[-1][2]:>10.3f}{rows[-1][2] - ref:>+10.3f}', flush=True)

    print(f"{'layers shared at ' + str(opt.bits) + ' bits':<52}{'of nnz':>10}{'mAP50-95':>10}{'change':>10}")
    print(f"{'none':<52}{0:>10.1%}{ref:>10.3f}{0:>+10.3f}")
    every = set(layers)
    add('all', every)
    reestimate_bn(base_bn := copy.deepcopy(base), train_loader, opt.bn_batches)
    rows.append(('not shared, BN re-estimated', 0.0, score(base_bn)))
    print(f"{'none, BN re-estimated (control)':<52}{0:>10.1%}{rows[-1][2]:>10.3f}{rows[-1][2] - ref:>+10.3f}")
    add('all, BN re-estimated', every, bn=True)
    modules = dict(prunable_layers(base))
    families = {'first conv': {layers[0]},
                'Detect output convs': {n for n in layers if isinstance(modules[n], nn.Conv2d) and modules[n].bias
                                        is not None and n.split('.')[1] == layers[-1].split('.')[1]},
                '3x3 and larger convs': {n for n in layers if modules[n].weight.dim() == 4 and
                                         modules[n].weight.shape[-1] > 1},
                '1x1 convs': {n for n in layers if modules[n].weight.dim() == 4 and modules[n].weight.shape[-1] == 1}}
    for label, names in families.items():
        add(f'all but the {label}', every - names)
        add(f'only the {label}', names)
    if opt.per_layer:
        per = []
        for n in layers:
            per.append((score(shared({n})) - ref, n))
        print('\nper layer, shared alone (worst first):')
        for d, n in sorted(per):
            print(f'{n:<40}{nnz[n]:>10}{nnz[n] / total:>10.1%}{d:>+10.3f}')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--weights', required=True, help='a sparse (DNS / pruned) checkpoint')
    p.add_argument('--data', default=str(ROOT / 'data' / 'shapes.yaml'))
    p.add_argument('--img', type=int, default=256)
    p.add_argument('--bits', type=int, default=4)
    p.add_argument('--bn-batches', type=int, default=16)
    p.add_argument('--per-layer', action='store_true')
    return p.parse_args(argv)


if __name__ == '__main__':
    main(parse_opt())
