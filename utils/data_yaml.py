"""Data yaml checks: find the yaml, resolve its paths, and make sure its splits exist (generated offline for an
embedded set with a `generator:` key, downloaded for a yaml that lists archives). Returns the dict loaders use.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from utils.downloads import MARKERS, DownloadError, dataset_zips, download_dataset, installed, needed
from utils.general import LOGGER, ROOT, yaml_load
from utils.shapes import generate_shapes_dataset

GENERATORS: dict[str, Callable[[Path], Path]] = {'shapes': generate_shapes_dataset}  # data yaml `generator:` key


def _find_yaml(file: str | Path) -> Path:
    """A data yaml as given, or by name from the repo's data/ folder."""
    p = Path(file)
    if p.suffix not in ('.yaml', '.yml'):
        raise ValueError(f"data must be a .yaml file or a dict, got '{file}'")
    for candidate in (p, ROOT / 'data' / p.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"data yaml '{file}' not found (looked in the working directory and {ROOT / 'data'})")


def _resolve(path: Path, x: str) -> str:
    """A split entry (folder, *.txt list or image) made absolute against the data set root ``path``."""
    p = (path / x).resolve()
    if not p.exists() and x.startswith('../'):  # upstream fallback for yamls written relative to the yaml
        p = (path / x[3:]).resolve()
    return str(p)


def check_dataset(data: str | Path | dict, autogenerate: bool = True, autodownload: bool = True,
                  splits: tuple[str, ...] = ('val',)) -> dict:
    """Read and check a data yaml (or dict); return it with absolute paths and ``names`` as {index: name}.

    Paths: ``path`` (the data set root) is used as is when absolute, otherwise relative to the repo root
    (upstream's rule; this repo's yamls use ``datasets/<name>``, a gitignored folder in the repo).
    ``train``/``val``/``test`` (a folder, a *.txt list or a list of those) are relative to ``path``.
    ``nc`` is optional and must equal the number of names. A set marked ``generator: <name>`` (see
    GENERATORS) is generated offline when its files are missing. A set whose ``splits`` are missing (or that a
    download left incomplete) is downloaded when its ``download:`` lists zip archives (utils.downloads: data,
    never executed; ``autodownload=False`` skips it); otherwise FileNotFoundError with the ``download`` text as
    a hint (never executed). A failed download raises DownloadError (one line).
    """
    src = str(data) if isinstance(data, (str, Path)) else 'data dict'
    if isinstance(data, (str, Path)):
        data = yaml_load(_find_yaml(data))
    if not isinstance(data, dict):
        raise ValueError(f'{src}: expected a mapping of keys (path, train, val, names), got {type(data).__name__}')
    data = dict(data)
    for k in ('train', 'val', 'names'):
        if k not in data:
            raise ValueError(f"{src}: '{k}:' key missing; a data yaml needs train, val and names")

    names = data['names']
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not all(isinstance(k, int) for k in names) \
            or sorted(names) != list(range(len(names))):
        raise ValueError(f'{src}: names must be a list or a dict {{0: name0, 1: name1, ...}} with keys 0..nc-1')
    data['names'] = {int(k): str(v) for k, v in sorted(names.items())}
    if data.get('nc') is not None and int(data['nc']) != len(names):
        raise ValueError(f"{src}: nc={data['nc']} but {len(names)} names are given; they must match")
    data['nc'] = len(names)

    path = Path(data.get('path') or '')
    if not path.is_absolute():
        path = (ROOT / path).resolve()
    data['path'] = str(path)
    for k in ('train', 'val', 'test'):
        x = data.get(k)
        if x:
            data[k] = _resolve(path, x) if isinstance(x, str) else [_resolve(path, str(y)) for y in x]
        else:
            data[k] = None
    if data.get('coco_json'):  # COCO-style annotations of the val split, used for pycocotools mAP
        data['coco_json'] = _resolve(path, data['coco_json'])

    def missing(keys: tuple[str, ...]) -> list[str]:
        out = []
        for k in keys:
            x = data[k]
            out += [p for p in ([x] if isinstance(x, str) else x or []) if not Path(p).exists()]
        return out

    generator = data.get('generator')
    if generator is not None:
        if generator not in GENERATORS:
            raise ValueError(f"{src}: unknown generator '{generator}', known: {', '.join(GENERATORS)}")
        if missing(('train', 'val')):
            if not autogenerate:
                raise FileNotFoundError(f'{src}: data set missing at {path}; run with autogenerate=True to make it')
            LOGGER.info(f"Generating the embedded '{generator}' data set in {path} ...")
            t = time.time()
            GENERATORS[generator](path)
            LOGGER.info(f'Done ({time.time() - t:.1f}s)')
    lost = missing(splits)
    dl = data.get('download')
    zips = dataset_zips(dl, path) if dl and (lost or (path / MARKERS).is_dir()) else None  # None: not a download
    if zips is not None:
        zips = needed(zips, splits)
        done = installed(zips, path)  # None: no download recorded (e.g. a set made by hand), judged by its files
        if (lost and not done) or done is False:
            what = f"not found: {', '.join(lost)} does not exist" if lost else \
                f'incomplete (a download into {path} did not finish)'
            if not autodownload:
                raise FileNotFoundError(f"Dataset {what}; to get it: {', '.join(z.url for z in zips)}")
            LOGGER.info(f'Dataset {what}; downloading the {len(zips)} archive(s) listed in {src}...')
            try:
                download_dataset(zips, path)
            except DownloadError as e:
                raise DownloadError(f"Dataset {what}, and {e} (the 'download:' of {src} lists what to fetch by hand)") \
                    from None
            lost = missing(splits)
    if lost:
        if zips:  # every archive is installed, yet the files are not there
            raise FileNotFoundError(f"Dataset not found: {', '.join(lost)} does not exist although "
                                    f"{', '.join(z.name for z in zips)} are recorded as installed in {path / MARKERS} "
                                    '(delete that folder to download them again)')
        if zips is not None:
            hint = f"; the 'download:' of {src} lists no archive for {'/'.join(splits)}"
        elif isinstance(dl, str) and dl.strip() and '\n' not in dl.strip():
            hint = f'; to get it: {dl.strip()}'
        elif dl:
            hint = f"; its 'download' script is not run by this project, get the data manually (see {src})"
        else:
            hint = ''
        raise FileNotFoundError(f"Dataset not found: {', '.join(lost)} does not exist{hint}")
    return data
