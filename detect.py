"""Run YOLOv5 detection on images, videos, folders, globs, *.txt lists, webcams and streams.

Usage (upstream YOLOv5 v7.0 flags, plus --prune/--prune-scope):
    python detect.py --weights yolov5s.pt --source 0                               # webcam
                                                   img.jpg                         # image
                                                   vid.mp4                         # video
                                                   path/                           # folder
                                                   'path/*.jpg'                    # glob
                                                   list.txt                        # file with one path per line
                                                   'rtsp://example.com/media.mp4'  # RTSP, RTMP, HTTP stream
    python detect.py --weights best.pt --source data/images --prune 0.3 --prune-scope global
    python detect.py --weights best.onnx --source data/images --img 256 [--dnn]   # export.py's ONNX file

Outputs in runs/detect/exp*/ (see --project/--name): annotated images and videos (<name>.mp4, mp4v, source fps
and size) unless --nosave; labels/<stem>.txt (``cls xc yc w h [conf]`` normalized to the original image; video
and stream frames: <stem>_<frame>.txt) with --save-txt; crops/<class name>/<stem>.jpg with --save-crop.
"""
from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.backend import fixed_input, is_exported, is_onnx
from models.experimental import load_weights, prepare_model
from utils.checkpoint import CheckpointError, strip_optimizer
from utils.cli import add_prune_args, fraction, int_at_least
from utils.compression.weight.magnitude import SparsityReport
from utils.dataloaders import VID_FORMATS, LoadImages, LoadStreams
from utils.labels import IMG_FORMATS
from utils.downloads import DownloadError, safe_download
from utils.general import (LOGGER, ROOT, check_img_size, colorstr, count_string, increment_path,
                           non_max_suppression, scale_boxes, set_logging, xyxy2xywhn, yaml_load)
from utils.plots import Annotator, colors, save_one_box
from utils.torch_utils import DeviceError, device_info, select_device, time_sync

SHAPES_WEIGHTS = Path('data/weights/yolov5n-shapes.pt')  # the project's own detector, relative to ROOT
STREAM_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')


@dataclass
class Detections:
    """Detections of one image or one video frame."""
    path: str  # source file
    frame: int  # video frame number (1-based); 0 for images
    shape: tuple[int, int]  # original image (height, width), pixels
    boxes: torch.Tensor  # (n, 6) CPU float32: x1, y1, x2, y2 in original-image pixels, confidence, class


@dataclass
class DetectResult:
    """What ``run`` returns: where outputs went, per-image detections and the run's numbers."""
    save_dir: Path  # runs/detect/exp* (created even with --nosave)
    names: dict[int, str]  # class index -> name
    detections: list[Detections] = field(default_factory=list)  # one per image/frame; empty for webcams/streams
    seen: int = 0  # images/frames processed
    skipped: int = 0  # unreadable files skipped
    speed: tuple[float, float, float] = (0.0, 0.0, 0.0)  # ms per image: pre-process, inference, NMS
    sparsity: SparsityReport | None = None  # of the model's weights (after --prune when given)


# ---------------------------------------------------------------------------------------------- helpers
def default_weights() -> str:
    """The project's shapes detector when shipped, else upstream's default name (downloaded on first use)."""
    f = ROOT / SHAPES_WEIGHTS
    return str(f) if f.is_file() else 'yolov5s.pt'


def classify_source(source: str) -> tuple[str, bool]:
    """(source, is_stream): webcam indices and stream URLs are streams; other paths are made absolute.

    A URL naming an image/video file is downloaded to the working directory first (like upstream).
    """
    suffix = Path(source).suffix[1:].lower()
    is_file = suffix in IMG_FORMATS + VID_FORMATS
    is_url = source.lower().startswith(STREAM_PREFIXES)
    if source.isnumeric() or (is_url and not is_file):
        return source, True
    if is_url:  # a remote image/video file
        f = Path(source.split('?')[0]).name
        if not Path(f).is_file():
            safe_download(source, Path(f))
        source = f
    return os.path.abspath(os.path.expanduser(source)), False


def class_names(model: nn.Module, data: str | Path | None) -> dict[int, str]:
    """Class names of ``model``; from the data yaml's ``names`` when the model has only numeric placeholders."""
    nc = int(model.nc if hasattr(model, 'nc') else model.yaml['nc'])
    names = getattr(model, 'names', None)
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if isinstance(names, dict) and len(names) == nc and any(str(v) != str(k) for k, v in names.items()):
        return {int(k): str(v) for k, v in names.items()}
    if data:
        f = Path(data) if Path(data).is_file() else ROOT / 'data' / Path(data).name
        d = yaml_load(f) if f.is_file() else {}
        dn = d.get('names')
        dn = dict(enumerate(dn)) if isinstance(dn, (list, tuple)) else dn
        if isinstance(dn, dict) and len(dn) == nc:
            return {int(k): str(v) for k, v in dn.items()}
        LOGGER.warning(f'WARNING ⚠️ --data {data} has no {nc} class names; using class indices as names')
    return {i: str(i) for i in range(nc)}


def load_model(weights: list[str], device: torch.device, half: bool, prune_amount: float = 0.0,
               prune_scope: str = 'layer', dnn: bool = False, **prune_kw) -> tuple[nn.Module, SparsityReport | None]:
    """Load (Ensemble for several files) in eval mode, prune the unfused weights if ``prune_amount`` > 0, fuse Conv+BN.

    Pruning before fusing ranks the trained conv weights (what a pruned checkpoint holds; val.py does the same);
    fusing keeps zeros zero. ``prune_kw``: prune_granularity, prune_importance, prune_round (see prepare_model).
    Returns the model and its sparsity (logged by prune(), or here when not pruning).
    One export gives a models.backend.ExportedModel (an .onnx in ONNX Runtime, or OpenCV DNN if ``dnn``; an
    OpenVINO folder or .xml in OpenVINO; sparsity None).
    """
    return prepare_model(load_weights(weights, device, dnn), device, half, prune_amount, prune_scope, **prune_kw)


def write_labels(file: Path, det: torch.Tensor, shape: tuple[int, ...], save_conf: bool) -> None:
    """Append ``cls xc yc w h [conf]`` lines (normalized to an image of ``shape`` (h, w, ...)) for (n, 6) ``det``."""
    xywhn = xyxy2xywhn(det[:, :4], w=shape[1], h=shape[0])
    with open(file, 'a') as f:
        for xywh, conf, cls in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(('%g ' * len(line)).rstrip() % line + '\n')


class VideoSaver:
    """One cv2.VideoWriter (mp4v) per output path; a new path closes the previous writer of that slot."""

    def __init__(self, n: int):
        self.paths: list[str | None] = [None] * n
        self.writers: list[cv2.VideoWriter | None] = [None] * n

    def write(self, i: int, path: Path, im: np.ndarray, fps: float) -> None:
        """Add frame ``im`` (BGR) to ``path`` (.mp4 suffix forced) at ``fps`` frames/s; size from the first frame."""
        path = str(path.with_suffix('.mp4'))
        if self.paths[i] != path:
            if self.writers[i] is not None:
                self.writers[i].release()
            h, w = im.shape[:2]
            self.paths[i] = path
            self.writers[i] = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
        self.writers[i].write(im)

    def close(self) -> None:
        """Finish every open video file."""
        for w in self.writers:
            if w is not None:
                w.release()
        self.writers = [None] * len(self.writers)


def show(window: str, im: np.ndarray) -> bool:
    """cv2.imshow ``im``; False (with a warning) when this OpenCV build or session has no display."""
    if platform.system() == 'Linux' and not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        LOGGER.warning('WARNING ⚠️ --view-img needs a display; none found (no DISPLAY), not showing images')
        return False
    try:
        cv2.imshow(window, im)
        cv2.waitKey(1)
    except cv2.error as e:
        LOGGER.warning(f'WARNING ⚠️ --view-img disabled: this OpenCV cannot show windows ({str(e).strip()[:80]})')
        return False
    return True


# ---------------------------------------------------------------------------------------------- main loop
@torch.no_grad()
def run(
        weights: str | Path | list = 'yolov5s.pt',  # model path(s); several make an ensemble
        source: str | Path = ROOT / 'data/images',  # file/dir/glob/*.txt list/URL, or 0 for webcam
        data: str | Path | None = ROOT / 'data/shapes.yaml',  # class names, used only when the model has none
        imgsz: int | list[int] = (640, 640),  # inference size (height, width), pixels
        conf_thres: float = 0.25,  # confidence threshold
        iou_thres: float = 0.45,  # NMS IoU threshold
        max_det: int = 1000,  # maximum detections per image
        device: str = '',  # cuda device, i.e. 0 or 0,1,2,3 or cpu
        view_img: bool = False,  # show results
        save_txt: bool = False,  # save results to *.txt
        save_conf: bool = False,  # save confidences in --save-txt labels
        save_crop: bool = False,  # save cropped prediction boxes
        nosave: bool = False,  # do not save images/videos
        classes: list[int] | None = None,  # filter by class: --classes 0, or --classes 0 2 3
        agnostic_nms: bool = False,  # class-agnostic NMS
        augment: bool = False,  # augmented inference
        visualize: bool = False,  # visualize features
        update: bool = False,  # strip the optimizer from weights[0] afterwards
        project: str | Path = ROOT / 'runs/detect',  # save results to project/name
        name: str = 'exp',  # save results to project/name
        exist_ok: bool = False,  # existing project/name ok, do not increment
        line_thickness: int = 3,  # bounding box thickness (pixels)
        hide_labels: bool = False,  # hide labels
        hide_conf: bool = False,  # hide confidences
        half: bool = False,  # use FP16 half-precision inference (CUDA only)
        dnn: bool = False,  # run .onnx weights with OpenCV DNN instead of ONNX Runtime
        vid_stride: int = 1,  # video frame-rate stride
        prune: float = 0.0,  # prune this fraction of the conv weights after loading, 0 <= prune < 1 (0: no pruning)
        prune_scope: str = 'layer',  # 'layer': that fraction of every layer; 'global': one threshold for all
        prune_granularity: str = 'weight',  # 'channel': remove whole output channels (a smaller, faster model)
        prune_importance: str | None = None,  # channel ranking: 'group' (default: filters + BN + readers), 'l1', 'bn'
        prune_round: int | str = 1,  # channel: kept channels per group rounded up to a multiple of this
) -> DetectResult:
    """Detect objects in ``source``; returns a DetectResult (save_dir, per-image detections in original-image
    pixels, counts, speed in ms per image, weight sparsity).

    Raises FileNotFoundError (missing source/weights), CheckpointError, DeviceError, DownloadError, ConnectionError
    (a webcam/stream that does not answer); ``main`` turns them into one 'ERROR: ...' line.
    """
    source = str(source)
    weights = [str(w) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    imgsz = [int(imgsz)] * 2 if isinstance(imgsz, int) else [int(x) for x in imgsz]
    imgsz = imgsz * 2 if len(imgsz) == 1 else imgsz
    source, is_stream = classify_source(source)
    if not is_stream and not any(c in source for c in '*?[') and not os.path.exists(source):
        raise FileNotFoundError(f'--source {source} does not exist')

    # Model
    device = select_device(device)
    LOGGER.info(f'YOLOv5 🚀 Python-{platform.python_version()} {device_info(device)}')
    if half and device.type == 'cpu':
        LOGGER.info('--half is for CUDA devices only: running FP32 on CPU')
    half = half and device.type != 'cpu'
    onnx = any(is_onnx(w) for w in weights)
    exported = any(is_exported(w) for w in weights)
    if dnn and not onnx:
        LOGGER.info('--dnn selects OpenCV DNN for ONNX models; PyTorch .pt weights run with PyTorch (flag ignored)')
    if update and exported:
        LOGGER.info('--update strips the optimizer from .pt weights: ignored for an exported model')
        update = False
    model, report = load_model(weights, device, half, prune, prune_scope, dnn, prune_granularity=prune_granularity,
                               prune_importance=prune_importance, prune_round=prune_round)
    stride = int(model.stride.max())
    names = class_names(model, data)
    imgsz = check_img_size(imgsz, s=stride)
    fixed = fixed_input(model, imgsz)  # a fixed-shape ONNX export: full letterbox at its size, as upstream
    imgsz = list(fixed) if fixed else imgsz

    # Source
    if is_stream:
        dataset = LoadStreams(source, img_size=imgsz, stride=stride, auto=not fixed, vid_stride=vid_stride)
    else:
        dataset = LoadImages(source, img_size=imgsz, stride=stride, auto=not fixed, vid_stride=vid_stride)
    bs = len(dataset) if is_stream else 1
    save_img = not nosave
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    result = DetectResult(save_dir=save_dir, names=names)

    if device.type != 'cpu':  # warm up kernels so the first image's time is representative
        model(torch.zeros(bs, 3, *imgsz, device=device, dtype=torch.half if half else torch.float))
    videos = VideoSaver(bs)
    dt = [0.0, 0.0, 0.0]
    try:
        for path, im, im0s, vid_cap, s in dataset:
            t0 = time_sync()
            im = torch.from_numpy(im).to(device)
            im = (im.half() if half else im.float()) / 255  # uint8 0-255 -> 0.0-1.0
            if im.ndim == 3:
                im = im[None]
            t1 = time_sync()
            stem = Path(path[0] if is_stream else path).stem
            vis = increment_path(save_dir / stem, mkdir=True) if visualize else False
            pred = model(im, augment=augment, visualize=vis)[0]
            t2 = time_sync()
            pred = non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det)
            t3 = time_sync()
            dt[0], dt[1], dt[2] = dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2

            for i, det in enumerate(pred):
                result.seen += 1
                if is_stream:
                    p, im0, frame = Path(path[i]), im0s[i].copy(), dataset.count
                    s += f'{i}: '
                    fps = dataset.fps[i]
                else:
                    p, im0 = Path(path), im0s
                    frame = dataset.frame if dataset.mode == 'video' else 0
                    fps = vid_cap.get(cv2.CAP_PROP_FPS) if vid_cap is not None else 30.0
                s += '%gx%g ' % im.shape[2:]
                txt_file = save_dir / 'labels' / (p.stem + ('' if dataset.mode == 'image' else f'_{frame}') + '.txt')
                imc = im0.copy() if save_crop else im0
                annotator = Annotator(im0, line_width=line_thickness, example=str(names))
                if len(det):
                    det[:, :4] = scale_boxes(im.shape[2:], det[:, :4], im0.shape).round()
                    s += count_string(det[:, 5], names)
                    if save_txt:
                        write_labels(txt_file, det.flip(0), im0.shape, save_conf)
                    for *xyxy, conf, cls in reversed(det.tolist()):
                        c = int(cls)
                        if save_img or save_crop or view_img:
                            label = None if hide_labels else (names[c] if hide_conf else f'{names[c]} {conf:.2f}')
                            annotator.box_label(xyxy, label or '', color=colors(c, True))
                        if save_crop:
                            save_one_box(xyxy, imc, file=save_dir / 'crops' / names[c] / f'{p.stem}.jpg', BGR=True)
                if not is_stream:
                    result.detections.append(Detections(str(p), frame, tuple(im0.shape[:2]), det.float().cpu()))

                im0 = annotator.result()
                if view_img:
                    view_img = show(str(p), im0)
                if save_img:
                    if dataset.mode == 'image':
                        cv2.imwrite(str(save_dir / p.name), im0)
                    else:  # video or stream
                        fps = fps if fps and np.isfinite(fps) and fps > 0 else 30.0
                        videos.write(i, save_dir / p.name, im0, fps)

            LOGGER.info(f"{s}{'' if len(det) else '(no detections), '}{(t2 - t1) * 1e3:.1f}ms")
    finally:
        videos.close()
        if is_stream:
            dataset.close()

    # Summary
    result.skipped = getattr(dataset, 'skipped', 0)
    if result.seen:
        result.speed = tuple(x / result.seen * 1e3 for x in dt)
        LOGGER.info(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape '
                    f'{(1, 3, *imgsz)}' % result.speed)
    if save_txt or save_img:
        n = len(list(save_dir.glob('labels/*.txt')))
        s = f"\n{n} labels saved to {save_dir / 'labels'}" if save_txt else ''  # upstream's words, even for 1
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}{s}")
    if update:
        mb = strip_optimizer(weights[0])
        LOGGER.info(f'Optimizer stripped from {weights[0]}, {mb:.1f}MB')
    result.sparsity = report
    if result.skipped:
        LOGGER.warning(f"WARNING ⚠️ skipped {result.skipped} unreadable file{'s' * (result.skipped != 1)}")
    return result


# ---------------------------------------------------------------------------------------------- CLI


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (upstream v7.0 names); ``argv`` None reads sys.argv."""
    parser = argparse.ArgumentParser(description='YOLOv5 detection on images, videos, folders and streams')
    parser.add_argument('--weights', nargs='+', type=str, default=[default_weights()], help='model path(s)')
    parser.add_argument('--source', type=str, default=str(ROOT / 'data/images'),
                        help='file/dir/glob/*.txt list/URL, or 0 for webcam')
    parser.add_argument('--data', type=str, default=str(ROOT / 'data/shapes.yaml'),
                        help='dataset.yaml, for class names when the model has none')
    parser.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int_at_least(1), default=[640],
                        help='inference size h,w (pixels)')
    parser.add_argument('--conf-thres', type=fraction, default=0.25, help='confidence threshold')
    parser.add_argument('--iou-thres', type=fraction, default=0.45, help='NMS IoU threshold')
    parser.add_argument('--max-det', type=int_at_least(1), default=1000, help='maximum detections per image')
    parser.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    parser.add_argument('--view-img', action='store_true', help='show results')
    parser.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    parser.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    parser.add_argument('--save-crop', action='store_true', help='save cropped prediction boxes')
    parser.add_argument('--nosave', action='store_true', help='do not save images/videos')
    parser.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    parser.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    parser.add_argument('--augment', action='store_true', help='augmented inference')
    parser.add_argument('--visualize', action='store_true', help='visualize features')
    parser.add_argument('--update', action='store_true', help='strip the optimizer from the (first) weights file')
    parser.add_argument('--project', default=str(ROOT / 'runs/detect'), help='save results to project/name')
    parser.add_argument('--name', default='exp', help='save results to project/name')
    parser.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    parser.add_argument('--line-thickness', default=3, type=int_at_least(1), help='bounding box thickness (pixels)')
    parser.add_argument('--hide-labels', default=False, action='store_true', help='hide labels')
    parser.add_argument('--hide-conf', default=False, action='store_true', help='hide confidences')
    parser.add_argument('--half', action='store_true', help='use FP16 half-precision inference (CUDA only)')
    parser.add_argument('--dnn', action='store_true', help='use OpenCV DNN for ONNX inference')
    parser.add_argument('--vid-stride', type=int_at_least(1), default=1, help='video frame-rate stride')
    add_prune_args(parser)
    opt = parser.parse_args(argv)
    if len(opt.imgsz) > 2:
        parser.error(f'--imgsz takes 1 or 2 values (size, or height width), got {len(opt.imgsz)}')
    opt.imgsz *= 2 if len(opt.imgsz) == 1 else 1  # expand
    return opt


def main(opt: argparse.Namespace) -> DetectResult:
    """Set up logging, log the options, run; user errors end the program with one 'ERROR: ...' line."""
    set_logging()
    LOGGER.info(colorstr('detect: ') + ', '.join(f'{k}={v}' for k, v in vars(opt).items()))
    try:
        return run(**vars(opt))
    except (FileNotFoundError, CheckpointError, DeviceError, DownloadError, ConnectionError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}') from None


if __name__ == '__main__':
    main(parse_opt())
