"""Plots and image annotation: box drawing (OpenCV), training/validation figures (matplotlib).

Figures are built with matplotlib.figure.Figure directly (no pyplot), so nothing here touches the
process-wide matplotlib backend or needs closing; text on images uses cv2.putText (no font files).
Images handed to Annotator are numpy HxWx3 uint8 in whatever channel order the colours use
(BGR for detect.py with colors(i, bgr=True), RGB for the mosaics of plot_images).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.general import LOGGER, clip_boxes, increment_path, xywh2xyxy, xyxy2xywh
from utils.metrics import PRCurves, smooth

# The 10 curves of upstream's results.png, in its subplot order (row 1: train losses, P, R; row 2: val losses, mAPs)
RESULTS_KEYS = ('train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
                'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95')


class Colors:
    """A fixed 20-colour palette; colors(i) is stable per class index i (RGB, or BGR with bgr=True)."""

    HEX = ('E6194B', '3CB44B', '4363D8', 'F58231', '911EB4', '42D4F4', 'F032E6', 'BFEF45', 'FABED4', '469990',
           'DCBEFF', '9A6324', 'FFE119', '800000', 'AAFFC3', '808000', 'FFD8B1', '000075', 'A9A9A9', 'FF6F61')

    def __init__(self):
        self.palette = [tuple(int(h[k:k + 2], 16) for k in (0, 2, 4)) for h in self.HEX]
        self.n = len(self.palette)

    def __call__(self, i: int, bgr: bool = False) -> tuple[int, int, int]:
        """Colour of class i as 0-255 (R, G, B), or (B, G, R) when bgr."""
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()  # `from utils.plots import colors`, as upstream


class Annotator:
    """Draw boxes, labels and text on a numpy HxWx3 uint8 image with OpenCV (in place when the array allows)."""

    def __init__(self, im: np.ndarray, line_width: int | None = None, example: str = ''):
        """im: HxWx3 uint8 image; line_width in pixels, the font follows it.

        By default the line width scales with the mean side d = (h + w) / 2: upstream's max(round(d * 0.003), 2)
        from d = 400 px, 1 px below. An explicit line_width is honoured up to round(d * 0.005) (3 px from about
        500 px) and reduced beyond that, so detect.py's fixed default (3 px, as upstream) draws 1 px lines and a
        small font on a 256 px image instead of covering it.
        `example` is accepted for upstream compatibility (it chose a font there); cv2 text is ASCII only.
        """
        if not isinstance(im, np.ndarray):
            raise TypeError(f'Annotator needs a numpy HxWx3 image, got {type(im).__name__}; convert it first')
        if not (im.flags.c_contiguous and im.flags.writeable):
            im = im.copy()  # OpenCV draws only into contiguous writeable arrays
        self.im = im
        d = (im.shape[0] + im.shape[1]) / 2
        auto = max(round(d * 0.003), 2 if d >= 400 else 1)
        self.lw = min(int(line_width), max(round(d * 0.005), 1)) if line_width else auto

    def _font(self) -> tuple[float, int]:
        """cv2 font scale and text thickness matching the line width: upstream's lw / 3, but at least 0.35 (letters
        about 9 px high, still readable)."""
        return max(self.lw / 3, 0.35), max(self.lw - 1, 1)

    def label_rect(self, box, label: str) -> tuple[tuple[int, int, int, int], tuple[int, int], float]:
        """Where box_label puts ``label`` for the xyxy ``box``: the filled tab (x1, y1, x2, y2), x2/y2 exclusive,
        the text origin (baseline-left) and the font scale.

        The tab sits on the box's top-left corner, above the box, or inside its top when there is no room above;
        it is shifted left rather than run off the right edge and is clamped into the image. A label wider than
        the image gets a smaller font.
        """
        hi, wi = self.im.shape[:2]
        scale, tf = self._font()
        pad = tf  # margin around the text (glyphs drawn with thickness tf spill about tf / 2 past their size)
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, tf)
        if w + 2 * pad > wi:  # wider than the image: shrink the font to fit
            scale *= (wi - 2 * pad) / (w + 2 * pad)
            (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, tf)
        tw, th = min(w + 2 * pad, wi), min(h + base + 2 * pad, hi)
        top = int(box[1])
        x1 = min(max(int(box[0]), 0), wi - tw)
        y1 = min(max(top - th if top >= th else top, 0), hi - th)  # above the box, else inside its top
        return (x1, y1, x1 + tw, y1 + th), (x1 + pad, y1 + pad + h), scale

    def box_label(self, box, label: str = '', color=(128, 128, 128), txt_color=(255, 255, 255)) -> None:
        """Draw an xyxy box (pixels) and, if label, the label on a filled tab (see label_rect)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            (x1, y1, x2, y2), org, scale = self.label_rect(box, label)
            cv2.rectangle(self.im, (x1, y1), (x2 - 1, y2 - 1), color, -1)  # filled, no anti-aliased spill
            cv2.putText(self.im, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, txt_color, self._font()[1],
                        cv2.LINE_AA)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        """Rectangle xy = (x1, y1, x2, y2) pixels: filled with `fill` and/or outlined with `outline`."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, fill, -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, outline, width)

    def text(self, xy, text: str, txt_color=(255, 255, 255), anchor: str = 'top') -> None:
        """Write text with its top-left (anchor='top') or bottom-left (anchor='bottom') corner at xy pixels."""
        scale, tf = self._font()
        h = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, tf)[0][1]
        y = int(xy[1]) + (h if anchor == 'top' else 0)
        cv2.putText(self.im, text, (int(xy[0]), y), cv2.FONT_HERSHEY_SIMPLEX, scale, txt_color, tf, cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated image (HxWx3 uint8)."""
        return self.im


def output_to_target(output: list[torch.Tensor], max_det: int = 300) -> np.ndarray:
    """NMS output (list per image of (n, 6) [x1, y1, x2, y2, conf, cls]) -> (N, 7) [batch_id, cls, xc, yc, w, h, conf].

    Boxes keep their units (pixels); at most max_det detections per image.
    """
    targets = []
    for i, o in enumerate(output):
        box, conf, cls = o[:max_det, :6].detach().cpu().float().split((4, 1, 1), 1)
        j = torch.full((conf.shape[0], 1), float(i))
        targets.append(torch.cat((j, cls, xyxy2xywh(box), conf), 1))
    return torch.cat(targets, 0).numpy() if targets else np.zeros((0, 7), dtype=np.float32)


def plot_images(images: torch.Tensor | np.ndarray,
                targets: torch.Tensor | np.ndarray,
                paths: list[str] | None = None,
                fname: str | Path = 'images.jpg',
                names: dict | list | None = None,
                max_size: int = 1920,
                max_subplots: int = 16) -> Path:
    """Save a square mosaic of a batch with its boxes; returns the file path.

    images: (b, 3, h, w) RGB, 0-255 or 0-1. targets: (n, 6) labels [batch_idx, cls, xc, yc, w, h] or (n, 7)
    predictions with a trailing conf (shown only when > 0.25); boxes normalised if all <= 1.01, else pixels.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2:
        targets = targets.reshape(-1, 6)
    if names is not None and not isinstance(names, dict):
        names = dict(enumerate(names))

    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    if images[0].max() <= 1:
        images = images * 255  # de-normalise

    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)  # tile origin, row by row
        mosaic[y:y + h, x:x + w] = images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)

    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (ns * w, ns * h))

    fs = int((h + w) * ns * 0.01)  # upstream's font size, sets the line width
    annotator = Annotator(mosaic, line_width=round(fs / 10))
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        annotator.rectangle([x, y, x + w, y + h], None, (255, 255, 255), width=2)  # tile border
        if paths:
            annotator.text([x + 5, y + 5], Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        ti = targets[targets[:, 0] == i]
        if not len(ti):
            continue
        boxes = xywh2xyxy(ti[:, 2:6]).T  # (4, n)
        classes = ti[:, 1].astype(int)
        is_label = ti.shape[1] == 6  # no conf column
        if boxes.max() <= 1.01:  # normalised (with tolerance)
            boxes[[0, 2]] *= w
            boxes[[1, 3]] *= h
        elif scale < 1:  # pixels of the original tile size
            boxes *= scale
        boxes[[0, 2]] += x
        boxes[[1, 3]] += y
        for j, box in enumerate(boxes.T.tolist()):
            c = classes[j]
            name = names.get(c, c) if names else c
            if is_label or ti[j, 6] > 0.25:
                annotator.box_label(box, f'{name}' if is_label else f'{name} {ti[j, 6]:.1f}', color=colors(c))
    fname = Path(fname)
    cv2.imwrite(str(fname), annotator.result()[..., ::-1])  # RGB mosaic -> BGR for OpenCV
    return fname


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_dir: str | Path = Path('pr_curve.png'),
                  names: dict | list | tuple = ()) -> None:
    """Precision-recall curves at IoU 0.5: py (nc, len(px)) precision at recall px; save_dir is the PNG path."""
    from matplotlib.figure import Figure

    py = np.asarray(py).reshape(-1, len(px))
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    fig = Figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    if 0 < len(names) < 21:  # per-class legend
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f'{names.get(i, i)} {ap[i, 0]:.3f}')
    else:
        ax.plot(px, py.T, linewidth=1, color='grey')
    ax.plot(px, py.mean(0), linewidth=3, color='blue', label=f'all classes {ap[:, 0].mean():.3f} mAP@0.5')
    ax.set_xlabel('Recall')
    ax.set_ylabel('Precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    ax.set_title('Precision-Recall Curve')
    fig.savefig(save_dir, dpi=250)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_dir: str | Path = Path('mc_curve.png'),
                  names: dict | list | tuple = (), xlabel: str = 'Confidence', ylabel: str = 'Metric') -> None:
    """Metric-vs-confidence curves (F1, P or R): py (nc, len(px)); the bold line is the smoothed class mean."""
    from matplotlib.figure import Figure

    py = np.asarray(py).reshape(-1, len(px))
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    fig = Figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    if 0 < len(names) < 21:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f'{names.get(i, i)}')
    else:
        ax.plot(px, py.T, linewidth=1, color='grey')
    y = smooth(py.mean(0), 0.05)
    ax.plot(px, y, linewidth=3, color='blue', label=f'all classes {y.max():.2f} at {px[y.argmax()]:.3f}')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    ax.set_title(f'{ylabel}-Confidence Curve')
    fig.savefig(save_dir, dpi=250)


def plot_pr_curves(curves: PRCurves, save_dir: str | Path, prefix: str = '') -> None:
    """The four evaluation plots of val.py: {prefix}PR_curve.png, F1_curve.png, P_curve.png, R_curve.png."""
    save_dir = Path(save_dir)
    c = curves
    plot_pr_curve(c.px, c.py, c.ap, save_dir / f'{prefix}PR_curve.png', c.names)
    plot_mc_curve(c.px, c.f1, save_dir / f'{prefix}F1_curve.png', c.names, ylabel='F1')
    plot_mc_curve(c.px, c.p, save_dir / f'{prefix}P_curve.png', c.names, ylabel='Precision')
    plot_mc_curve(c.px, c.r, save_dir / f'{prefix}R_curve.png', c.names, ylabel='Recall')


def plot_labels(labels: np.ndarray, names: dict | list | tuple = (), save_dir: str | Path = Path('')) -> Path:
    """Save labels.jpg for a data set's labels (n, 5) [cls, xc, yc, w, h normalised]; returns its path.

    Panels: instances per class, all boxes drawn centred, centre x-y histogram, width-height histogram.
    """
    from matplotlib.figure import Figure

    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    names = list(names.values()) if isinstance(names, dict) else list(names)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = int(c.max() + 1) if len(c) else max(len(names), 1)

    fig = Figure(figsize=(8, 8), tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
    _, _, bars = ax[0].hist(c, bins=np.linspace(0, nc, nc + 1) - 0.5, rwidth=0.8)
    for i, bar in enumerate(bars):
        bar.set_color([v / 255 for v in colors(i)])
    ax[0].set_ylabel('instances')
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)), names, rotation=90, fontsize=10)
    else:
        ax[0].set_xlabel('classes')

    # every box (first 1000) drawn around the image centre, on a 2000 px canvas
    canvas = np.full((2000, 2000, 3), 255, dtype=np.uint8)
    boxes = b[:1000].copy()
    boxes[:, :2] = 0.5
    for ci, box in zip(c[:1000], xywh2xyxy(boxes) * 2000):
        cv2.rectangle(canvas, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colors(ci), 1)
    ax[1].imshow(canvas)
    ax[1].axis('off')

    for a, (i, j), (xl, yl) in ((ax[2], (0, 1), ('x', 'y')), (ax[3], (2, 3), ('width', 'height'))):
        if len(b):
            a.hist2d(b[:, i], b[:, j], bins=50, cmap='Blues', vmin=0, cmin=1)  # empty bins stay white
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    for a in ax:
        for s in ('top', 'right', 'left', 'bottom'):
            a.spines[s].set_visible(False)

    f = Path(save_dir) / 'labels.jpg'
    fig.savefig(f, dpi=200)
    return f


def _gaussian_smooth(y: np.ndarray, sigma: float = 3) -> np.ndarray:
    """Gaussian-smoothed curve (edge values repeated), numpy only: the dotted trend line in results.png."""
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(np.asarray(y, dtype=float), r, mode='edge'), k, mode='valid')


def plot_results(file: str | Path = 'path/to/results.csv', dir: str | Path = '') -> Path:
    """Save results.png next to results*.csv (the folder of `file`, or `dir`); returns its path.

    A 2x5 grid of upstream's 10 curves (losses, P, R, mAPs) per epoch, with a Gaussian-smoothed dotted line;
    any other numeric column (e.g. 'sparsity'; not epoch or the x/lr* learning rates) gets extra rows.
    """
    import pandas as pd
    from matplotlib.figure import Figure

    save_dir = Path(file).parent if file else Path(dir)
    files = sorted(save_dir.glob('results*.csv'))
    if not files:
        raise FileNotFoundError(f'No results*.csv in {save_dir.resolve()}, nothing to plot')
    frames = {}
    for f in files:
        data = pd.read_csv(f)
        data.columns = [str(k).strip() for k in data.columns]  # upstream pads column names with spaces
        frames[f] = data
    extras = []
    for data in frames.values():
        for k in data.columns:
            if (k not in RESULTS_KEYS and k != 'epoch' and not k.startswith('x/') and k not in extras
                    and pd.api.types.is_numeric_dtype(data[k])):
                extras.append(k)
    keys = list(RESULTS_KEYS) + extras
    rows = 2 + math.ceil(len(extras) / 5)

    fig = Figure(figsize=(12, 3 * rows), tight_layout=True)
    ax = fig.subplots(rows, 5).ravel()
    for f, data in frames.items():
        x = data['epoch'].to_numpy() if 'epoch' in data else np.arange(len(data))
        for a, k in zip(ax, keys):
            if k not in data:
                continue
            y = data[k].to_numpy(dtype=float)
            a.plot(x, y, marker='.', label=f.stem, linewidth=2, markersize=8)
            a.plot(x, _gaussian_smooth(y, sigma=3), ':', label='smooth', linewidth=2)
    for a, k in zip(ax, keys):
        a.set_title(k, fontsize=12)
    for a in ax[len(keys):]:
        a.axis('off')
    ax[1].legend()
    out = save_dir / 'results.png'
    fig.savefig(out, dpi=200)
    return out


def save_one_box(xyxy, im: np.ndarray, file: Path = Path('im.jpg'), gain: float = 1.02, pad: int = 10,
                 square: bool = False, BGR: bool = False, save: bool = True) -> np.ndarray:
    """Crop box xyxy (pixels) from BGR image im, enlarged to wh * gain + pad pixels (square: longest side).

    Returns the crop (BGR if BGR else RGB). With save, writes it as JPEG to `file` (parent folders created,
    name incremented if taken: im.jpg -> im2.jpg); the file always has correct colours.
    """
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32).view(-1, 4)
    b = xyxy2xywh(xyxy)
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True)[0]
    b[:, 2:] = b[:, 2:] * gain + pad
    xyxy = xywh2xyxy(b).long()
    clip_boxes(xyxy, im.shape)
    crop = im[int(xyxy[0, 1]):int(xyxy[0, 3]), int(xyxy[0, 0]):int(xyxy[0, 2])]
    if save:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        f = increment_path(file).with_suffix('.jpg')
        cv2.imwrite(str(f), crop, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    return crop if BGR else crop[..., ::-1]


def feature_visualization(x: torch.Tensor, module_type: str, stage: int, n: int = 32,
                          save_dir: str | Path = Path('runs/detect/exp')) -> Path | None:
    """Save up to n channels of feature map x (b, c, h, w), image 0, as stage{stage}_{type}_features.png (+ .npy).

    Detect/Segment outputs and 1-pixel maps are skipped (returns None); otherwise returns the PNG path.
    """
    if 'Detect' in module_type or 'Segment' in module_type:
        return None
    _, channels, height, width = x.shape
    if height <= 1 or width <= 1:
        return None
    from matplotlib.figure import Figure

    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    maps = x[0].detach().cpu().float()
    n = min(n, channels)
    fig = Figure(figsize=(8, math.ceil(n / 8)))
    ax = fig.subplots(math.ceil(n / 8), 8, squeeze=False).ravel()
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    for i, a in enumerate(ax):
        if i < n:
            a.imshow(maps[i].numpy())
        a.axis('off')
    LOGGER.info(f'Saving {f}... ({n}/{channels})')
    fig.savefig(f, dpi=300, bbox_inches='tight')
    np.save(str(f.with_suffix('.npy')), x[0].detach().cpu().numpy())
    return f
