"""Downloads: official YOLOv5 weights (release assets) and data sets whose data yaml lists zip archives.

Every transfer goes through ``safe_download``: a tqdm bar, bytes written to ``<file>.part`` and renamed to
``<file>`` only when complete, and HTTP Range requests to continue a cut transfer (within the call, and in a later
call from the kept ``.part``) where the server allows it. Standard-library urllib only.

Data sets: the ``download:`` entry of a data yaml is read as data, never run (upstream YOLOv5 executes Python or
bash from it). Accepted forms::

    download: https://example.com/coco128.zip        # one zip, unpacked into the parent of 'path'
    download:                                          # or a list of zips
      - url: https://example.com/coco2017labels.zip    # required: http(s) URL of a .zip
        dir: ..                                        # optional: where it unpacks, relative to 'path' (default ..)
      - {url: http://example.com/val2017.zip, dir: images, split: val}  # split: only needed for that split

Anything else (a script, a shell command, prose) is not a download description: check_dataset shows it as a hint.
How a set is installed without ever being half there (``download_dataset``): zips are fetched and unpacked in a
work folder ``<root>/.<name>.download/`` beside the set (root = the parent of 'path'), one subfolder per zip
mirroring root; only when every zip the requested splits need is unpacked are they moved into place, each
recorded by a marker ``<path>/.downloaded/<zip name>``. A set with that marker folder is complete only when every
zip it needs has its marker, so an interrupted run resumes (finished zips are not fetched again) and a set made by
hand (no marker folder) is judged by its files as before.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from utils.general import LOGGER

GITHUB_RELEASES = 'https://github.com/ultralytics/yolov5/releases/download'
RELEASE = 'v7.0'
ASSETS = tuple(f'yolov5{size}{suffix}.pt' for size in 'nsmlx' for suffix in ('', '6', '-cls', '-seg'))
SPLITS = ('train', 'val', 'test')
MARKERS = '.downloaded'  # folder in a data set root: one empty file per installed zip


class DownloadError(RuntimeError):
    """A file that could not be downloaded or unpacked (one-line message)."""


# ---------------------------------------------------------------------------------------------- one file
def _reason(e: BaseException) -> str:
    r = getattr(e, 'reason', None) or e
    return str(r).strip().splitlines()[0] if str(r).strip() else type(e).__name__


def _fetch(url: str, tmp: Path, timeout: float, state: dict[str, bool]) -> None:
    """One request appending to ``tmp`` from its current size; sets ``state['ranges']`` when the server honours
    Range requests. Raises URLError/OSError/HTTPException on failure (the bytes received so far stay in ``tmp``).
    """
    from tqdm import tqdm

    have = tmp.stat().st_size if tmp.exists() else 0
    req = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        r = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https URLs from data yamls or flags)
    except urllib.error.HTTPError as e:
        total = re.fullmatch(r'bytes \*/(\d+)', e.headers.get('Content-Range', '') or '') if e.code == 416 else None
        if total and int(total.group(1)) == have:  # the .part already holds the whole file
            state['ranges'] = True
            return
        if e.code == 416:  # a stale .part longer than the file: start again
            tmp.unlink()
            return _fetch(url, tmp, timeout, state)
        raise
    with r:
        ranged = r.status == 206
        if have and not ranged:  # the server ignored Range and sends the whole file: start again
            have = 0
        elif ranged and not (r.headers.get('Content-Range') or '').startswith(f'bytes {have}-'):
            raise http.client.HTTPException(f'unexpected Content-Range {r.headers.get("Content-Range")!r}')
        length = r.headers.get('Content-Length')
        total = have + int(length) if length else None
        state['ranges'] = ranged or (r.headers.get('Accept-Ranges') or '').lower() == 'bytes'
        with open(tmp, 'ab' if have else 'wb') as f, \
                tqdm(total=total, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=f'Downloading {tmp.name[:-5]}') as bar:
            while chunk := r.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
    size = tmp.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b'', total - size)


def safe_download(url: str, file: str | Path, min_bytes: float = 0, timeout: float = 30, retries: int = 3) -> Path:
    """Download ``url`` to ``file`` through ``<file>.part``, renamed into place when complete.

    A transfer cut after some bytes is continued with an HTTP Range request (or restarted when the server ignores
    Range) up to ``retries`` times; an attempt that receives nothing ends the call. On failure the ``.part`` is
    kept when the server honours Range (a later call continues it), else deleted. Raises DownloadError (one line):
    ``downloading <url> failed (<reason>)``; a result under ``min_bytes`` bytes is deleted and counts as failed.
    """
    file = Path(file)
    tmp = file.with_name(file.name + '.part')
    file.parent.mkdir(parents=True, exist_ok=True)
    state, why = {'ranges': False}, ''
    for _ in range(retries + 1):
        before = tmp.stat().st_size if tmp.exists() else 0
        try:
            _fetch(url, tmp, timeout, state)
            why = ''
            break
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            why = _reason(e) if not isinstance(e, http.client.IncompleteRead) else \
                f'connection closed with {e.expected} bytes to go'
            if isinstance(e, urllib.error.HTTPError) or not tmp.exists() or tmp.stat().st_size <= before:
                break  # an HTTP error status or no progress: retrying will not help
    if not why and tmp.stat().st_size < min_bytes:
        why = f'only {tmp.stat().st_size} bytes received'
        tmp.unlink()
    if why:
        kept = tmp.exists() and tmp.stat().st_size > 0 and state['ranges']
        if not kept:
            tmp.unlink(missing_ok=True)
        raise DownloadError(f'downloading {url} failed ({why})' +
                            (f'; {tmp.stat().st_size} bytes kept in {tmp}, run again to resume' if kept else ''))
    os.replace(tmp, file)
    return file


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
    base = base_url or os.environ.get('YOLOV5_ASSETS_URL') or f'{GITHUB_RELEASES}/{release}'
    url = f'{base.rstrip("/")}/{path.name}'
    LOGGER.info(f'Downloading {url} to {path}...')
    try:
        return safe_download(url, path, min_bytes=1e5)
    except DownloadError as e:
        raise DownloadError(f'{path.name} not found locally and {e}. Download it manually from '
                            f'https://github.com/ultralytics/yolov5/releases/tag/{release} '
                            f'and pass its path with --weights') from None


# ---------------------------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class DatasetZip:
    """One archive of a data set: fetched from ``url`` and unpacked into ``dir``."""
    url: str
    dir: Path  # absolute folder the archive unpacks into (inside the parent of the set's 'path')
    split: str | None = None  # needed only for this split; None = for every split

    @property
    def name(self) -> str:
        """The archive's file name, e.g. ``val2017.zip``."""
        return Path(urllib.parse.urlparse(self.url).path).name


def _is_url(s: Any) -> bool:
    return isinstance(s, str) and re.fullmatch(r'https?://\S+', s.strip()) is not None


def dataset_zips(download: Any, path: str | Path) -> list[DatasetZip] | None:
    """The archives a data yaml's ``download:`` value describes (see the module docstring), for set root ``path``.

    Returns None for a value that is not a download description (prose, a script: shown as a hint, never run).
    Raises ValueError (one line) for a list or URL that is malformed, not a .zip, or unpacks outside the parent
    of ``path``.
    """
    if isinstance(download, str) and not _is_url(download):
        return None
    path = Path(path).resolve()
    items = [download] if isinstance(download, str) else download
    if not isinstance(items, list) or not items:
        raise ValueError(f"'download:' must be a zip URL or a list of {{url, dir, split}} entries, got {download!r}")
    out = []
    for item in items:
        entry = {'url': item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or set(entry) - {'url', 'dir', 'split'} or not _is_url(entry.get('url')):
            raise ValueError(f"'download:' entry {item!r} is not an http(s) URL or a {{url, dir, split}} mapping "
                             '(nothing in a data yaml is executed)')
        url = entry['url'].strip()
        if not urllib.parse.urlparse(url).path.endswith('.zip'):
            raise ValueError(f"'download:' {url}: only .zip archives are supported")
        target = (path / str(entry.get('dir', '..'))).resolve()
        if target != path.parent and path.parent not in target.parents:
            raise ValueError(f"'download:' dir {entry.get('dir')!r} of {url} is outside {path.parent}")
        split = entry.get('split')
        if split is not None and split not in SPLITS:
            raise ValueError(f"'download:' split {split!r} of {url} is not one of {', '.join(SPLITS)}")
        out.append(DatasetZip(url, target, split))
    return out


def needed(zips: Iterable[DatasetZip], splits: Iterable[str]) -> list[DatasetZip]:
    """The archives the given splits need: those without a split and those of one of ``splits``."""
    splits = set(splits)
    return [z for z in zips if z.split is None or z.split in splits]


def work_dir(path: str | Path) -> Path:
    """Where a set's archives are fetched and unpacked before they are moved into place."""
    path = Path(path).resolve()
    return path.parent / f'.{path.name}.download'


def installed(zips: Iterable[DatasetZip], path: str | Path) -> bool | None:
    """True when every archive has its marker in ``<path>/.downloaded``, False when one lacks it, None when the
    set has no marker folder (not installed by download_dataset: judge it by its files)."""
    markers = Path(path) / MARKERS
    if not markers.is_dir():
        return None
    return all((markers / z.name).is_file() for z in zips)


def _move_tree(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst``, merging folders and replacing files; removes ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        q = dst / p.name
        if p.is_dir() and q.is_dir():
            _move_tree(p, q)
        else:
            if q.is_dir():
                shutil.rmtree(q)
            os.replace(p, q)
    src.rmdir()


def unzip_file(file: Path, dest: Path) -> None:
    """Unpack ``file`` into ``dest`` (created), checking every member's CRC; zipfile drops absolute and ``..``
    parts of member names, so nothing lands outside ``dest``. Raises DownloadError for a damaged archive and
    leaves no partial ``dest``."""
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(file) as z:
            for m in tqdm(z.infolist(), desc=f'Unzipping {file.name}', unit='file'):
                z.extract(m, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise DownloadError(f'{file.name} is not a valid zip archive ({_reason(e)})') from None
    except OSError as e:  # e.g. a full disk
        shutil.rmtree(dest, ignore_errors=True)
        raise DownloadError(f'unpacking {file.name} into {dest} failed ({_reason(e)})') from None


def download_dataset(zips: list[DatasetZip], path: str | Path, timeout: float = 30) -> None:
    """Fetch, unpack and install the archives of set ``path`` that have no marker yet (see the module docstring).

    Raises DownloadError (one line). A damaged archive is deleted with what was unpacked from it; a transfer cut
    on a server that honours Range keeps its ``.part`` for the next call; archives already unpacked in the work
    folder are kept for the next call. Nothing is moved into ``path`` until every archive is unpacked.
    """
    path = Path(path).resolve()
    markers = path / MARKERS
    todo = [z for z in zips if not (markers / z.name).is_file()]
    if not todo:
        return
    work = work_dir(path)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for z in todo:
            ready = work / f'{z.name}.ready'
            if ready.is_file():  # unpacked by an earlier call
                (work / z.name).unlink(missing_ok=True)
                continue
            archive = work / z.name
            if not archive.is_file():
                LOGGER.info(f'Downloading {z.url} to {archive}...')
                safe_download(z.url, archive, timeout=timeout)
            tree = work / Path(z.name).stem
            shutil.rmtree(tree, ignore_errors=True)  # leftovers of an interrupted unzip
            try:
                unzip_file(archive, tree / z.dir.relative_to(path.parent))
            except DownloadError as e:
                shutil.rmtree(tree, ignore_errors=True)
                archive.unlink()
                raise DownloadError(f'{e}; downloaded from {z.url}, deleted, run again to fetch it anew') from None
            ready.touch()
            archive.unlink()
        markers.mkdir(parents=True, exist_ok=True)  # from here on the set is incomplete until every marker exists
        for z in todo:
            LOGGER.info(f'Installing {z.name} into {z.dir}')
            tree = work / Path(z.name).stem
            if tree.is_dir():
                _move_tree(tree, path.parent)
            (markers / z.name).touch()
            (work / f'{z.name}.ready').unlink(missing_ok=True)
    finally:
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()
    LOGGER.info(f'Dataset ready in {path}')
