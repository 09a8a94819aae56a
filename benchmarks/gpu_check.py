"""One short GPU check (a few minutes on one H100): val.py speed dense vs --prune 0.3, DNS step overhead, and
channel-pruning latency in FP16.

Usage (on a CUDA machine, from the repo root):  python benchmarks/gpu_check.py [--device 0] [--imgsz 640]

1. yolov5s and yolov5x, random init (3 classes, the embedded shapes set, generated offline), val.py --task speed
   with --half, batch 32, --img 640: inference ms/img dense vs pruned 30 % (layer-wise), and their ratio.
   Unstructured zeros do not make dense GPU kernels faster: expect a ratio of ~1.0 (upstream's tutorial says
   the same); the check is that pruning costs no speed and that FP16 + pruning runs on CUDA.
2. benchmarks/dns_bench.py on the GPU (yolov5s, 640 px, batch 16): plain step vs DNS steps and memory.
3. benchmarks/latency_bench.py on the GPU in FP16: yolov5n/s dense vs 50 % unstructured vs channel-pruned to half
   the FLOPs (plain and rounded to multiples of 8), batch 1 at 640 and batch 32 at 256.
Prints numbers only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def speed_table(device: str, imgsz: int, batch: int, cfgs: list[str], tmp: Path) -> None:
    import torch

    import val
    from models.yolo import DetectionModel
    from utils.checkpoint import make_checkpoint, save

    print(f"{'model':<10}{'prune':>7}{'precision':>11}{'ms/img':>9}{'ratio':>8}{'sparsity':>10}")
    for cfg in cfgs:
        torch.manual_seed(0)
        w = tmp / f'{Path(cfg).stem}-random.pt'
        save(make_checkpoint(DetectionModel(cfg, nc=3)), w)
        base = None
        for amount in (0.0, 0.3):
            name = f'{w.stem}-{amount:g}'
            val.run(data='data/shapes.yaml', weights=[str(w)], batch_size=batch, imgsz=imgsz, task='speed',
                    device=device, half=True, prune=amount, plots=False, project=str(tmp), name=name, exist_ok=True)
            m = json.loads((tmp / name / 'metrics.json').read_text())
            base = base or m['ms_per_img']
            print(f"{Path(cfg).stem:<10}{amount:>7.1f}{m['precision']:>11}{m['ms_per_img']:>9.2f}"
                  f"{m['ms_per_img'] / base:>8.3f}{m['sparsity']:>10.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='0', help='CUDA device index')
    p.add_argument('--imgsz', type=int, default=640)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--cfgs', nargs='+', default=['yolov5s.yaml', 'yolov5x.yaml'])
    opt = p.parse_args()

    import torch

    from utils.general import set_logging
    if not torch.cuda.is_available():
        raise SystemExit('ERROR: gpu_check needs a CUDA GPU (torch.cuda.is_available() is False)')
    set_logging(verbose=False)
    t0 = time.time()
    print(f'{torch.cuda.get_device_name(int(opt.device))}, torch {torch.__version__}')
    with tempfile.TemporaryDirectory() as tmp:
        speed_table(opt.device, opt.imgsz, opt.batch_size, opt.cfgs, Path(tmp))
    from benchmarks import dns_bench
    dns_bench.run(cfg='yolov5s.yaml', img=opt.imgsz, batch=16, warmup=3, iters=10, device=f'cuda:{opt.device}')
    from benchmarks import latency_bench
    latency_bench.run(cfgs=['yolov5n.yaml', 'yolov5s.yaml'], device=opt.device, half=True, repeats=20)
    print(f'gpu_check done in {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
