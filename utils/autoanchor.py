"""AutoAnchor: check how well the model's anchors fit a data set's boxes and evolve better ones if needed.

Fit metric (upstream YOLOv5): for a label of size wh and an anchor k, ``x = min(wh/k, k/wh)`` over width and
height (1 = same size, 0.25 = 4x off). A label is recallable when some anchor has ``x > 1/thr``, matching the
``anchor_t`` test of the loss's target assignment. Anchors here are in pixels unless stated otherwise;
``Detect.anchors`` holds them in stride units.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from utils.data_yaml import check_dataset
from utils.dataloaders import LoadImagesAndLabels
from utils.general import LOGGER, colorstr
from utils.torch_utils import de_parallel


def _prefix() -> str:
    return colorstr('AutoAnchor: ')


def check_anchor_order(m: torch.nn.Module) -> None:
    """Make the anchor sizes of ``Detect`` module ``m`` grow with stride, flipping the levels in place if not.

    Compares the mean anchor area in pixels of the first and last level (``m.anchors`` is in stride units).
    """
    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    pixels = m.anchors * stride
    area = pixels.prod(-1).mean(-1).view(-1)  # mean anchor area per level, pixels^2
    da = area[-1] - area[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign().to(da.device)):
        LOGGER.info(f'{_prefix()}Reversing anchor order')
        m.anchors[:] = pixels.flip(0) / stride


def _label_wh(dataset: Any, img_size: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Label widths and heights ``(n, 2)`` in pixels once each image is resized to long side ``img_size``."""
    shapes = img_size * dataset.shapes / dataset.shapes.max(1, keepdims=True)  # (n_images, 2) wh
    if scale is not None:
        shapes = shapes * scale
    wh = [labels[:, 3:5] * s for s, labels in zip(shapes, dataset.labels) if len(labels)]
    return np.concatenate(wh).astype(np.float32) if wh else np.zeros((0, 2), np.float32)


def _ratio_metric(k: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio metric ``x`` (n_labels, n_anchors) and each label's best anchor ``x`` (n_labels,)."""
    r = wh[:, None] / k[None]
    x = np.minimum(r, 1 / r).min(2)
    return x, x.max(1)


def check_anchors(dataset: Any, model: torch.nn.Module, thr: float = 4.0, imgsz: int = 640) -> float:
    """Log the anchor fit to ``dataset`` and, if the best possible recall (BPR) is at most 0.98, evolve new anchors.

    ``dataset`` has ``.shapes`` (n, 2) image wh and ``.labels`` (list of (m, 5) [cls, xywh normalized]).
    New anchors are written into ``model``'s Detect (stride units) only when they give a higher BPR.
    Box sizes are jittered by a seeded uniform 0.9-1.1 scale per image to mimic scale augmentation.
    Returns the BPR of the anchors the model holds afterwards.
    """
    m = de_parallel(model).model[-1]  # Detect
    scale = np.random.default_rng(0).uniform(0.9, 1.1, size=(len(dataset.shapes), 1))
    wh = _label_wh(dataset, imgsz, scale)
    if not len(wh):
        LOGGER.warning(f'{_prefix()}WARNING ⚠️ no labels in dataset, skipping anchor check')
        return 0.0

    def metric(k: np.ndarray) -> tuple[float, float]:
        x, best = _ratio_metric(k, wh)
        aat = (x > 1 / thr).sum(1).mean()  # anchors above threshold per label
        bpr = (best > 1 / thr).mean()  # best possible recall
        return float(bpr), float(aat)

    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    anchors = (m.anchors.detach().float() * stride).cpu().view(-1, 2).numpy()  # pixels
    bpr, aat = metric(anchors)
    s = f"\n{_prefix()}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        LOGGER.info(f'{s}Current anchors are a good fit to dataset ✅')
        return bpr

    LOGGER.info(f'{s}Anchors are a poor fit to dataset ⚠️, attempting to improve...')
    na = m.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False)
    new_bpr = metric(new)[0]
    if new_bpr > bpr:
        k = torch.as_tensor(new, dtype=m.anchors.dtype, device=m.anchors.device).view_as(m.anchors)
        m.anchors[:] = k / stride
        check_anchor_order(m)
        LOGGER.info(f'{_prefix()}Done ✅ (optional: update model *.yaml to use these anchors in the future)')
        return new_bpr
    LOGGER.info(f'{_prefix()}Done ⚠️ (original anchors better than new anchors, proceeding with original anchors)')
    return bpr


def kmeans(points: np.ndarray, k: int, iters: int = 30, restarts: int = 3, seed: int = 0) -> tuple[np.ndarray, float]:
    """Lloyd's k-means of ``points`` (n, d) into ``k`` clusters; returns ``(centroids (k, d), mean distance)``.

    k-means++ seeding, ``iters`` Lloyd steps per start (stops early when assignments settle), best of
    ``restarts`` starts by mean Euclidean distance to the nearest centroid. Deterministic for a given ``seed``.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if not 0 < k <= n:
        raise ValueError(f'kmeans needs 1 <= k <= number of points, got k={k} for {n} points')
    rng = np.random.default_rng(seed)
    sq = (points**2).sum(1)

    def sq_dist(c: np.ndarray) -> np.ndarray:  # (n, len(c)) squared distances without an (n, k, d) temporary
        return np.maximum(sq[:, None] - 2 * points @ c.T + (c**2).sum(1)[None], 0)

    best_c, best_d = None, np.inf
    for _ in range(restarts):
        c = points[[rng.integers(n)]]
        d2 = sq_dist(c)[:, 0]
        for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
            total = d2.sum()
            new = points[[rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)]]
            c = np.concatenate((c, new))
            d2 = np.minimum(d2, sq_dist(new)[:, 0])
        assign = None
        for _ in range(iters):
            new_assign = sq_dist(c).argmin(1)
            if assign is not None and np.array_equal(new_assign, assign):
                break
            assign = new_assign
            counts = np.bincount(assign, minlength=k)
            sums = np.stack([np.bincount(assign, weights=points[:, i], minlength=k) for i in range(points.shape[1])], 1)
            filled = counts > 0  # an emptied cluster keeps its old centre
            c[filled] = sums[filled] / counts[filled, None]
        dist = float(np.sqrt(sq_dist(c).min(1)).mean())
        if dist < best_d:
            best_c, best_d = c.copy(), dist
    return best_c, best_d


def kmean_anchors(
    dataset: Any = './data/coco128.yaml',
    n: int = 9,
    img_size: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    verbose: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Evolve ``n`` anchors (pixels at ``img_size``) for a data set; returns float32 ``(n, 2)`` wh sorted by area.

    ``dataset`` is a data yaml path/dict (its train split is loaded) or an object with ``.shapes``/``.labels``.
    k-means on whitened label wh gives the start; a genetic search (``gen`` generations of multiplicative
    mutations) then maximises the fitness = mean over labels of the best anchor's ratio metric, counted
    only where it passes ``1/thr``. Deterministic for a given ``seed``.
    """
    if isinstance(dataset, (str, dict)):

        data = check_dataset(dataset)  # only labels and image sizes are used: no augmentation (which needs hyp)
        dataset = LoadImagesAndLabels(data['train'], rect=True, nc=data['nc'])
    prefix = _prefix()
    thr = 1 / thr
    rng = np.random.default_rng(seed)
    py_rng = random.Random(seed)

    wh0 = _label_wh(dataset, img_size)  # all labels, for reporting
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.info(f'{prefix}WARNING ⚠️ Extremely small objects found: {small} of {len(wh0)} labels are <3 pixels')
    wh = wh0[(wh0 >= 2.0).any(1)]  # evolve on labels of at least 2 px
    if not len(wh):
        raise ValueError(f'AutoAnchor: no labels of 2 pixels or more at img_size={img_size}; cannot compute anchors')

    # fitness runs once per generation, so it uses the log form of the ratio metric:
    # min(r, 1/r) = exp(-|log r|), with the (2, n) log sizes laid out so every reduction is contiguous
    log_wh = np.ascontiguousarray(np.log(np.maximum(wh, 1e-6)).T)  # a 0-size side: no fit, no warning

    def fitness(k: np.ndarray) -> float:
        log_k = np.log(k)
        d = np.abs(log_wh[0][None] - log_k[:, 0, None])  # (n_anchors, n_labels)
        np.maximum(d, np.abs(log_wh[1][None] - log_k[:, 1, None]), out=d)
        best = np.exp(-d.min(0))
        return float((best * (best > thr)).mean())

    def results(k: np.ndarray, log: bool) -> np.ndarray:
        k = k[np.argsort(k.prod(1))]  # small to large
        x, best = _ratio_metric(k.astype(np.float32), wh0)
        bpr, aat = (best > thr).mean(), (x > thr).mean() * n
        if log:
            past = x[x > thr]
            s = (
                f"{prefix}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr\n"
                f'{prefix}n={n}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, '
                f'past_thr={past.mean() if len(past) else 0.0:.3f}-mean: '
            )
            LOGGER.info(s + ', '.join(f'{round(a)},{round(b)}' for a, b in k))
        return k

    LOGGER.info(f'{prefix}Running kmeans for {n} anchors on {len(wh)} points...')
    if n <= len(wh):
        s = wh.std(0).astype(np.float64)
        s[s == 0] = 1.0  # all labels the same size along one axis: nothing to whiten
        k = kmeans(wh / s, n, iters=30, seed=seed)[0] * s
    else:
        LOGGER.warning(f'{prefix}WARNING ⚠️ fewer labels than anchors, switching from kmeans to random init')
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    k = results(k.astype(np.float32), log=False)

    # genetic evolution: multiplicative mutations of the current best, kept only when fitness improves
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1  # fitness, shape, mutation probability, sigma
    pbar = tqdm(range(gen), desc=f'{prefix}Evolving anchors with Genetic Algorithm', disable=gen == 0)
    for _ in pbar:
        v = np.ones(sh)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(sh) < mp) * py_rng.random() * rng.standard_normal(sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0).astype(np.float32)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f'{prefix}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}'
            if verbose:
                results(k, log=True)
    return results(k, log=True).astype(np.float32)
