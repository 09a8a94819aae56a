"""The INT8 settings compared on one model: mAP of its FP32 ONNX file and of INT8 variants (ONNX Runtime QDQ, and
OpenVINO NNCF presets, bias correction, an extra FP32 conv, more calibration images), val.py on the embedded set.

Usage:
    python benchmarks/int8_settings.py                                   # the shipped model at 256 px
    python benchmarks/int8_settings.py --weights runs/train/r16g45-s0/weights/last.pt

Prints one line per variant (mAP50, mAP50-95, difference to the FP32 file) and writes the exports to --project/--name.
Needs the optional packages onnx, onnxruntime, openvino, nncf.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import export  # noqa: E402
import val  # noqa: E402
from utils.compression.quant.openvino_ptq import quantize_openvino  # noqa: E402
from utils.compression.quant.ptq import CalibrationImages  # noqa: E402
from utils.data_yaml import check_dataset  # noqa: E402
from utils.general import increment_path  # noqa: E402

# name: (preset, fast bias correction, extra FP32 convs, calibration images (None: --calib-images))
VARIANTS = {
    'performance, fast bias correction (NNCF defaults)': ('performance', True, (), None),
    'mixed, fast bias correction': ('mixed', True, (), None),
    'performance, full bias correction': ('performance', False, (), None),
    'mixed, full bias correction (export.py default)': ('mixed', False, (), None),
    'performance, fast, first conv FP32': ('performance', True, ('/model/model.0/conv/Conv',), None),
    'performance, fast, 300 calibration images': ('performance', True, (), 300),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', type=Path, default=ROOT / 'data' / 'weights' / 'yolov5n-shapes.pt')
    p.add_argument('--data', default=str(ROOT / 'data' / 'shapes.yaml'))
    p.add_argument('--img', type=int, default=256, help='export and evaluation size, pixels')
    p.add_argument('--calib-images', type=int, default=128)
    p.add_argument('--project', type=Path, default=ROOT / 'runs' / 'val')
    p.add_argument('--name', default='int8-settings')
    opt = p.parse_args()
    import openvino as ov

    out = increment_path(opt.project / opt.name, mkdir=True)
    w = out / opt.weights.name
    shutil.copy(opt.weights, w)
    onnx_file, ort_int8 = export.run(data=opt.data, weights=w, imgsz=opt.img, int8=True,
                                     calib_images=opt.calib_images)  # W.onnx (opset 17), W-int8.onnx
    ov_fp32 = export.run(weights=w, imgsz=opt.img, include=['openvino'], opset=17)[-1]  # the same graph, + W.yaml
    train = check_dataset(opt.data)['train']
    files = {'FP32 ONNX': onnx_file, 'ONNX Runtime INT8 (QDQ, MinMax)': ort_int8}
    for i, (name, (preset, fast, keep, n)) in enumerate(VARIANTS.items()):
        calib = CalibrationImages(train, (opt.img, opt.img), n or opt.calib_images)
        q, _ = quantize_openvino(ov.convert_model(onnx_file), onnx_file, calib, preset, keep,
                                 fast_bias_correction=fast)
        d = out / f'v{i}_openvino_model'
        d.mkdir(exist_ok=True)
        ov.save_model(q, str(d / f'{w.stem}.xml'), compress_to_fp16=False)
        shutil.copy(Path(ov_fp32) / f'{w.stem}.yaml', d / f'{w.stem}.yaml')
        files[f'OpenVINO INT8, {name}'] = str(d)
    base = None
    lines = []
    for name, f in files.items():
        (_, _, map50, map_, *_), _, _ = val.run(data=opt.data, weights=f, imgsz=opt.img, batch_size=1, workers=0,
                                                plots=False, project=out / 'val', name='v')
        base = map_ if base is None else base
        lines.append(f'{name:<68}{map50:>8.3f}{map_:>10.3f}{map_ - base:>+9.3f}')
    print(f"\n{opt.weights} at {opt.img} px, {opt.calib_images} calibration images\n"
          f"{'variant':<68}{'mAP50':>8}{'mAP50-95':>10}{'vs FP32':>9}")
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
