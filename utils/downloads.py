"""Official YOLOv5 weights: download a missing release asset like upstream, or fail with one line."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from utils.general import LOGGER

GITHUB_RELEASES = 'https://github.com/ultralytics/yolov5/releases/download'
RELEASE = 'v7.0'
ASSETS = tuple(f'yolov5{size}{suffix}.pt' for size in 'nsmlx' for suffix in ('', '6', '-cls', '-seg'))


class DownloadError(RuntimeError):
    """A missing weights file that could not be downloaded."""


def safe_download(url: str, file: Path, min_bytes: float = 1e4, timeout: float = 30) -> None:
    """Download ``url`` to ``file`` with a tqdm bar; a partial or tiny file is removed (raises DownloadError)."""
    from tqdm import tqdm

    tmp = file.with_name(file.name + '.part')
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, 'wb') as f:  # noqa: S310 (https/http only)
            total = int(r.headers.get('Content-Length') or 0)
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=f'Downloading {file.name}') as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
        if tmp.stat().st_size < min_bytes:
            raise DownloadError(f'{url} returned only {tmp.stat().st_size} bytes')
        os.replace(tmp, file)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f'{file.name} not found locally and downloading {url} failed ({getattr(e, "reason", e)}). '
                            f'Download it manually from https://github.com/ultralytics/yolov5/releases/tag/{RELEASE} '
                            f'and pass its path with --weights') from None
    finally:
        tmp.unlink(missing_ok=True)


def attempt_download(file: str | Path, base_url: str | None = None, release: str = RELEASE) -> Path:
    """Return ``file`` if it exists; download it when it names an official release asset.

    ``base_url`` (or the env var YOLOV5_ASSETS_URL, read at call time) replaces the GitHub release
    address, e.g. for a mirror. Anything else that does not exist raises FileNotFoundError.
    """
    path = Path(str(file).strip().replace("'", ''))
    if path.exists():
        return path
    if path.name not in ASSETS:
        raise FileNotFoundError(f'weights file not found: {path}')
    if path.parent != Path('.') and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    base = base_url or os.environ.get('YOLOV5_ASSETS_URL') or f'{GITHUB_RELEASES}/{release}'
    url = f'{base.rstrip("/")}/{path.name}'
    LOGGER.info(f'Downloading {url} to {path}...')
    safe_download(url, path, min_bytes=1e5)
    return path
