"""Checkpoint files: safe loading (allow-listed unpickling) and atomic saving in upstream's layout.

YOLOv5 ``.pt`` files pickle whole modules, so loading one reconstructs objects by import path.
``load`` uses torch's weights-only unpickler with an explicit allow-list of exactly the classes a
YOLOv5 checkpoint needs; any other global (``os.system``, ``builtins.eval``, ...) is refused with a
one-line ``CheckpointError`` naming it, before anything is executed.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
import tempfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.compression.deep.codec import DEEP_KEY
from utils.compression.deep.codec import expand as expand_deep  # .deep.pt files
from utils.compression.deep.sparse_format import decode_sparse, encode_sparse, encoded_nbytes
from utils.compression.layers import de_parallel

UPSTREAM_KEYS = ('epoch', 'best_fitness', 'model', 'ema', 'updates', 'optimizer', 'opt', 'git', 'date')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot or must not be loaded (unsafe global, corrupt or missing file)."""


def _allowed_globals() -> list:
    """Classes/functions a YOLOv5 checkpoint (release or training) may reference, with their pickle names."""
    import collections
    import pathlib

    import numpy as np

    from models import common, yolo

    ours = [getattr(common, n) for n in ('Conv', 'DWConv', 'Bottleneck', 'BottleneckCSP', 'C3', 'SPP', 'SPPF',
                                         'Focus', 'Concat')]
    ours += [yolo.Detect, yolo.DetectionModel, (yolo.DetectionModel, 'models.yolo.Model')]
    torch_nn = [nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.Identity,
                nn.MaxPool2d, nn.Upsample, nn.Sequential, nn.ModuleList, nn.Dropout, nn.Linear]
    other = [collections.OrderedDict, set, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
             np.dtype, np.ndarray]
    # numpy scalars (e.g. best_fitness saved as np.float64) pickle through these reconstructors
    for mod, name in (('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
                      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct')):
        try:
            module = __import__(mod, fromlist=[name])
            other.append((getattr(module, name), f'{mod}.{name}'))
        except (ImportError, AttributeError):
            pass
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool', 'uint8')]
    return ours + torch_nn + other + dtypes


_UNSAFE = re.compile(r'GLOBAL\s+([\w.]+)')


def _torch_load(source: Any, label: str, map_location: str | torch.device) -> Any:
    """torch.load with the allow-list; every failure becomes a one-line CheckpointError naming ``label``."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = _UNSAFE.search(msg)
        if not m:  # no refused global: the bytes are not a pickle torch can read (a text file, random bytes...)
            why = re.search(r'WeightsUnpickler error:\s*(\S.*)', msg)
            raise CheckpointError(f'cannot read checkpoint {label}: not a PyTorch checkpoint'
                                  f'{f" ({why.group(1).strip()})" if why else ""}') from None
        what = m.group(1)
        if m and '.' not in what:  # torch names builtins without their module
            what = f'builtins.{what}'
        raise CheckpointError(f'refusing to load {label}: it references {what}, which is not part of a '
                              f'YOLOv5 checkpoint (only allow-listed torch/numpy/models.* classes are loaded)') from None
    except (KeyError, IndexError, TypeError, struct.error) as e:  # torch's unpickler on garbage, e.g. short text
        raise CheckpointError(f'cannot read checkpoint {label}: not a PyTorch checkpoint ({type(e).__name__} {e})') from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'cannot read checkpoint {label}: {first}') from None


def load_bytes(data: bytes, map_location: str | torch.device = 'cpu') -> Any:
    """``torch.load`` of an in-memory checkpoint through the same allow-list as ``load`` (no expansion)."""
    return _torch_load(io.BytesIO(data), 'in memory', map_location)


def load(path: str | Path, map_location: str | torch.device = 'cpu', expand: bool = True) -> dict[str, Any]:
    """Load a YOLOv5 checkpoint dict without executing arbitrary code.

    Raises CheckpointError (one line) for a missing file, a refused global or a corrupt file.
    Compact checkpoints (``save(..., compact=True)``) and entropy-coded ``.deep.pt`` files
    (utils/compression/deep/codec.py) are expanded transparently to the dense form (``expand=False``: as stored).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    ckpt = _torch_load(path, str(path), map_location)
    if not isinstance(ckpt, dict):
        ckpt = {'model': ckpt}
    if not expand:
        return ckpt
    if SPARSE_KEY in ckpt:
        try:
            _expand(ckpt)
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f'corrupt compact weights in {path}: {e}') from None
    if DEEP_KEY in ckpt:
        try:
            ckpt = expand_deep(ckpt[DEEP_KEY], lambda data: load_bytes(data, map_location))
        except (CheckpointError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise CheckpointError(f'corrupt deep-compressed checkpoint {path}: {e}') from None
    return ckpt


SPARSE_KEY = 'sparse_weights'  # compact checkpoints: {'model'|'ema': {param name: encode_sparse(...) dict}}


def _compact(ckpt: dict[str, Any], codec: str = 'zlib') -> dict[str, Any]:
    """Copy of ``ckpt`` whose model weights that encode smaller are moved, encoded, under SPARSE_KEY.

    The pickled modules keep every attribute; an encoded parameter is left as an empty tensor of its dtype.
    """
    out, sparse = dict(ckpt), {}
    for key in ('model', 'ema'):
        if not isinstance(ckpt.get(key), nn.Module):
            continue
        model, enc = deepcopy(ckpt[key]), {}
        for name, p in model.named_parameters():
            if p.dim() > 1:
                e = encode_sparse(p.data.cpu(), codec)
                if encoded_nbytes(e) < p.numel() * p.element_size():
                    enc[name] = e
                    p.data = torch.empty(0, dtype=p.dtype)
        out[key], sparse[key] = model, enc
    out[SPARSE_KEY] = sparse
    return out


def _expand(ckpt: dict[str, Any]) -> None:
    """Inverse of ``_compact``, in place: decode every encoded weight back into its parameter (bit-exact)."""
    for key, enc in ckpt.pop(SPARSE_KEY).items():
        params = dict(ckpt[key].named_parameters())
        for name, e in enc.items():
            params[name].data = decode_sparse(e)


def save(ckpt: dict[str, Any], path: str | Path, compact: bool = False) -> None:
    """torch.save ``ckpt`` atomically: write a temp file in the same folder, then rename over ``path``.

    A crash or Ctrl-C during the write leaves the previous file intact. ``compact=True`` stores each sparse
    weight as a bitmask + its non-zero values (utils.compression.deep.sparse_format): much smaller for pruned models, read back
    bit-exactly by ``load``, but upstream YOLOv5 cannot read it — the default is upstream's plain dense form.
    """
    path = Path(path)
    if compact:
        ckpt = _compact(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_checkpoint(model: nn.Module, ema: nn.Module | None = None, epoch: int = -1, best_fitness: float | None = None,
                    updates: int | None = None, optimizer: dict | None = None, opt: dict | None = None,
                    **extra: Any) -> dict[str, Any]:
    """Upstream's checkpoint dict: FP16 copies of ``model``/``ema`` plus training state and extra keys.

    Extra keys (e.g. ``dns`` masks) are ignored by upstream's loader.
    """
    def half_copy(m: nn.Module | None) -> nn.Module | None:
        return None if m is None else deepcopy(de_parallel(m)).half()

    ckpt = {'epoch': epoch, 'best_fitness': best_fitness, 'model': half_copy(model), 'ema': half_copy(ema),
            'updates': updates, 'optimizer': optimizer, 'opt': opt, 'git': None, 'date': datetime.now().isoformat()}
    ckpt.update(extra)
    return ckpt


def release_checkpoint(ckpt: dict[str, Any], keep_extra: bool = False) -> dict[str, Any]:
    """Upstream's finished-checkpoint dict from a (training or release) checkpoint: EMA (else model) as 'model', a
    copy without gradients, no optimizer or EMA, epoch -1. Extra keys (e.g. 'dns' or 'share' training state) are
    dropped unless ``keep_extra``."""
    model = ckpt.get('ema') if isinstance(ckpt.get('ema'), nn.Module) else ckpt.get('model')
    if not isinstance(model, nn.Module):
        raise ValueError("checkpoint holds no model under 'model' or 'ema'")
    out = {k: ckpt.get(k) for k in UPSTREAM_KEYS}
    out.update(epoch=-1, best_fitness=None, model=deepcopy(de_parallel(model)), ema=None, updates=None,
               optimizer=None)
    if keep_extra:
        out.update({k: v for k, v in ckpt.items() if k not in UPSTREAM_KEYS})
    for p in out['model'].parameters():
        p.requires_grad = False
    return out


def strip_optimizer(f: str | Path) -> float:
    """Finish a training checkpoint file in place like a release (release_checkpoint, extra keys kept, FP16).
    Returns MB on disk."""
    ckpt = release_checkpoint(load(f), keep_extra=True)
    ckpt['model'].half()
    save(ckpt, f)
    return os.path.getsize(f) / 1e6
