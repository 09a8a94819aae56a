"""Tests for utils/dataloaders.py: verification of broken files, label cache, rect shapes, mosaic,
data yaml checks, loaders, and the detect.py sources (images, video, streams)."""
import contextlib
import logging
import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils import data_yaml
from utils.data_yaml import check_dataset
from utils.dataloaders import LoadImages, LoadImagesAndLabels, LoadStreams, create_dataloader
from utils.labels import CORRUPT, img2label_paths, labels_to_class_weights, labels_to_image_weights, scan_labels
from utils.downloads import dataset_zips, needed
from utils.general import LOGGER, ROOT, yaml_load
from utils.shapes import boxes_to_yolo, draw_sample, generate_shapes_dataset

HYP_KEYS = ['lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr', 'box',
            'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'fl_gamma', 'hsv_h', 'hsv_s', 'hsv_v', 'degrees',
            'translate', 'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup', 'copy_paste']


def _write(root: Path, name: str, img: np.ndarray | bytes | None, label: str | None, split: str = 'train') -> Path:
    """Write images/<split>/<name> (array -> encoded by suffix, bytes as is) and labels/<split>/<stem>.txt."""
    (root / 'images' / split).mkdir(parents=True, exist_ok=True)
    (root / 'labels' / split).mkdir(parents=True, exist_ok=True)
    f = root / 'images' / split / name
    if isinstance(img, bytes):
        f.write_bytes(img)
    else:
        cv2.imwrite(str(f), img)
    if label is not None:
        (root / 'labels' / split / (Path(name).stem + '.txt')).write_text(label)
    return f


@contextlib.contextmanager
def _log_lines():
    """Collect the messages of the project logger (which may not propagate to the root logger)."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(r.getMessage())
    old = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(old)


def _shapes_image(seed: int, h: int = 64, w: int = 64):
    img, boxes, _ = draw_sample(np.random.default_rng(seed), h, w)
    return img, boxes_to_yolo(boxes, h, w)


@pytest.fixture
def broken_set(tmp_path):
    """3 good images, 1 with a duplicate row, 1 polygon label, 1 missing and 1 empty label, 7 broken files."""
    root = tmp_path / 'broken'
    for i in range(3):
        _write(root, f'good{i}.jpg', *_shapes_image(i))
    img, _ = _shapes_image(10)
    _write(root, 'dup.png', img, '0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.5 0.5 0.2 0.2\n')
    _write(root, 'poly.png', img, '2 0.1 0.1 0.5 0.1 0.3 0.6\n')
    _write(root, 'nolabel.png', img, None)
    _write(root, 'emptylabel.png', img, '')
    good_jpg = cv2.imencode('.jpg', img)[1].tobytes()
    _write(root, 'garbage.jpg', b'this is not an image at all' * 10, '0 0.5 0.5 0.1 0.1\n')
    _write(root, 'truncated.jpg', good_jpg[:len(good_jpg) // 2], '0 0.5 0.5 0.1 0.1\n')
    _write(root, 'tiny.png', np.zeros((8, 8, 3), np.uint8), '0 0.5 0.5 0.1 0.1\n')
    _write(root, 'cols.png', img, '0 0.5 0.5 0.1\n')
    _write(root, 'range.png', img, '0 0.5 1.2 0.1 0.1\n')
    _write(root, 'negative.png', img, '1 -0.1 0.5 0.1 0.1\n')
    _write(root, 'class.png', img, '5 0.5 0.5 0.1 0.1\n')
    return root


def test_img2label_paths():
    s = os.sep
    assert img2label_paths([f'{s}d{s}images{s}train{s}a.b.jpg', f'{s}images{s}x{s}images{s}y.png']) == \
        [f'{s}d{s}labels{s}train{s}a.b.txt', f'{s}images{s}x{s}labels{s}y.txt']


def test_verification_counts_and_no_crash(broken_set):
    ds = LoadImagesAndLabels(broken_set / 'images' / 'train', img_size=64, batch_size=4, nc=3)
    assert ds.stats == {'found': 5, 'missing': 1, 'empty': 1, 'corrupt': 7, 'duplicates': 1, 'total': 14}
    names = sorted(Path(f).name for f in ds.im_files)
    assert names == ['dup.png', 'emptylabel.png', 'good0.jpg', 'good1.jpg', 'good2.jpg', 'nolabel.png', 'poly.png']
    lb = dict(zip((Path(f).name for f in ds.im_files), ds.labels))
    assert np.allclose(lb['dup.png'], [[0, 0.5, 0.5, 0.2, 0.2], [1, 0.3, 0.3, 0.1, 0.1]])
    assert np.allclose(lb['poly.png'], [[2, 0.3, 0.35, 0.4, 0.5]])  # polygon -> enclosing xywh
    assert lb['nolabel.png'].shape == (0, 5) and lb['emptylabel.png'].shape == (0, 5)
    assert len(ds) == 7 and ds.shapes.tolist() == [[64, 64]] * 7
    for i in range(len(ds)):  # every kept item loads
        im, labels, _, _ = ds[i]
        assert im.shape == (3, 64, 64) and labels.shape[1] == 6


def test_unknown_class_ok_without_nc(broken_set):
    ds = LoadImagesAndLabels(broken_set / 'images' / 'train', img_size=64, nc=None)
    assert ds.stats['corrupt'] == 6 and any(Path(f).name == 'class.png' for f in ds.im_files)


def test_all_corrupt_and_empty_sets_raise(tmp_path):
    _write(tmp_path / 'bad', 'x.jpg', b'junk' * 20, '0 0.5 0.5 0.1 0.1\n')
    with pytest.raises(FileNotFoundError, match='No usable images'):
        LoadImagesAndLabels(tmp_path / 'bad' / 'images' / 'train', img_size=64)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='No images found'):
        LoadImagesAndLabels(tmp_path / 'empty', img_size=64)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        LoadImagesAndLabels(tmp_path / 'nowhere', img_size=64)


def test_cache_reused_and_rebuilt_on_change(tmp_path):
    root = tmp_path / 'c'
    for i in range(3):
        _write(root, f'{i}.jpg', *_shapes_image(i))
    ims = sorted(str(p) for p in (root / 'images' / 'train').iterdir())
    lbs = img2label_paths(ims)
    cache = root / 'labels' / 'train.cache'
    a, from_cache = scan_labels(ims, lbs, cache, nc=3)
    assert not from_cache and cache.is_file()
    b, from_cache = scan_labels(ims, lbs, cache, nc=3)
    assert from_cache and np.array_equal(a['labels'], b['labels'])
    # a label file changes -> rebuilt, new content seen
    Path(lbs[0]).write_text('1 0.5 0.5 0.25 0.25\n')
    c, from_cache = scan_labels(ims, lbs, cache, nc=3)
    assert not from_cache and c['labels'][0].tolist() == [1, 0.5, 0.5, 0.25, 0.25] and c['n_labels'][0] == 1
    # nc is part of the hash: class 1 is unknown with nc=1
    d, from_cache = scan_labels(ims, lbs, cache, nc=1)
    assert not from_cache and d['status'][0] == CORRUPT
    # a damaged cache or an upstream-style pickled one is never trusted (nor unpickled): rebuilt
    cache.write_bytes(b'garbage')
    assert scan_labels(ims, lbs, cache, nc=1)[1] is False
    with open(cache, 'wb') as f:
        np.save(f, {'hash': 'x', 'version': 0.6}, allow_pickle=True)
    e, from_cache = scan_labels(ims, lbs, cache, nc=1)
    assert not from_cache and e['status'].tolist() == d['status'].tolist()
    with _log_lines() as lines:  # the dataset says where its counts come from
        assert LoadImagesAndLabels(root / 'images' / 'train', 64, nc=3).stats['corrupt'] == 0
        assert LoadImagesAndLabels(root / 'images' / 'train', 64, nc=3).stats['found'] == 3
    scans = [x for x in lines if 'Scanning' in x]
    assert scans[0].endswith('3 images, 0 backgrounds, 0 corrupt') and scans[1].endswith('0 corrupt (cache)')


def _rect_set(root: Path) -> list[str]:
    """Four images (w x h): 160x80, 160x120, 120x160, 80x160 with one known box each."""
    names = []
    for i, (w, h) in enumerate([(160, 120), (80, 160), (160, 80), (120, 160)]):
        img = np.full((h, w, 3), 50, np.uint8)
        names.append(str(_write(root, f'r{i}.png', img, '0 0.5 0.5 0.5 0.5\n')))
    return names


@pytest.mark.parametrize('batch_size, pad, golden', [
    (2, 0.5, [[160, 192], [192, 160]]),  # (h, w) per batch: wide pair, tall pair
    (2, 0.0, [[128, 160], [160, 128]]),
    (4, 0.5, [[192, 192]]),  # mixed batch -> square
    (1, 0.5, [[96, 192], [160, 192], [192, 160], [192, 96]]),  # h/w 0.5: ceil(0.5 * 5 + 0.5) = 3 -> 96
])
def test_rect_batch_shapes_golden(tmp_path, batch_size, pad, golden):
    _rect_set(tmp_path)
    ds = LoadImagesAndLabels(tmp_path / 'images', img_size=160, batch_size=batch_size, rect=True, stride=32, pad=pad)
    assert ds.batch_shapes.tolist() == golden
    assert [Path(f).name for f in ds.im_files] == ['r2.png', 'r0.png', 'r3.png', 'r1.png']  # sorted by h/w


def test_rect_val_items_and_collate(tmp_path):
    _rect_set(tmp_path)
    loader, ds = create_dataloader(str(tmp_path / 'images'), 160, 2, 32, rect=True, pad=0.5, workers=0)
    im, labels, path, shapes = ds[0]  # r2: 160x80 in a (160, 192) batch shape, no scaling up
    assert im.shape == (3, 160, 192) and im.dtype == torch.uint8
    assert shapes == ((80, 160), ((1.0, 1.0), (16.0, 40.0)))
    # box 0.5 0.5 0.5 0.5 of the 160x80 image, moved by the padding into the 192x160 canvas
    assert labels[0, 1:].tolist() == pytest.approx([0, (80 + 16) / 192, (40 + 40) / 160, 80 / 192, 40 / 160])
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 160, 192), (2, 3, 192, 160)]
    assert batches[1][1][:, 0].tolist() == [0, 1]  # image index within the batch
    assert len(batches[0][2]) == 2 and batches[0][3][1][0] == (120, 160)


def test_letterboxed_item_scales_down_to_img_size(tmp_path):
    img = np.full((100, 200, 3), 50, np.uint8)
    _write(tmp_path, 'a.png', img, '1 0.25 0.5 0.1 0.2\n')
    ds = LoadImagesAndLabels(tmp_path / 'images', img_size=64)
    im, labels, _, shapes = ds[0]
    # 200x100 -> 64x32, letterboxed to 64x64 with 16 rows of padding top and bottom
    assert im.shape == (3, 64, 64) and shapes == ((100, 200), ((0.32, 0.32), (0.0, 16.0)))
    assert labels[0, 1:].tolist() == pytest.approx([1, 0.25, (16 + 16) / 64, 0.1, 0.2 * 32 / 64])
    assert (im[:, :16] == 114).all() and (im[:, 16:48] == 50).all()


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp('d') / 'shapes', n_train=12, n_val=4, imgsz=96, seed=5)


@pytest.fixture(scope='module')
def hyp():
    return yaml_load(ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml')


@pytest.mark.parametrize('mixup', [0.0, 1.0])
def test_mosaic_shape_and_labels_inside(shapes_root, hyp, mixup):
    ds = LoadImagesAndLabels(shapes_root / 'images' / 'train', img_size=96, augment=True,
                             hyp={**hyp, 'mixup': mixup, 'degrees': 10.0}, nc=3)
    assert ds.mosaic
    random.seed(0)
    np.random.seed(0)
    n_boxes = 0
    for i in range(8):
        im, labels, _, shapes = ds[i]
        assert im.shape == (3, 96, 96) and im.dtype == torch.uint8 and shapes is None
        xywh = labels[:, 2:]
        x1, y1 = xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2
        x2, y2 = xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2
        assert (x1 >= -1e-6).all() and (y1 >= -1e-6).all() and (x2 <= 1 + 1e-6).all() and (y2 <= 1 + 1e-6).all()
        assert (xywh[:, 2:] > 2 / 96).all()  # box_candidates removed slivers
        assert set(labels[:, 1].long().tolist()) <= {0, 1, 2}
        n_boxes += len(labels)
    assert n_boxes > 8


def test_load_mosaic_pixels_come_from_the_four_images(shapes_root, hyp):
    # without the affine step (scale/translate 0) the mosaic is a crop of the 2s x 2s canvas: labels stay on shapes
    ds = LoadImagesAndLabels(shapes_root / 'images' / 'train', img_size=96, augment=True,
                             hyp={**hyp, 'translate': 0.0, 'scale': 0.0}, nc=3)
    random.seed(1)
    img, labels = ds.load_mosaic(0)
    assert img.shape == (96, 96, 3) and labels.shape[1] == 5 and len(labels)
    assert (labels[:, 1:] >= 0).all() and (labels[:, [1, 3]] <= 96).all() and (labels[:, [2, 4]] <= 96).all()


def test_seeded_workers_reproducible(shapes_root, hyp):
    batches = []
    for _ in range(2):
        loader, _ = create_dataloader(str(shapes_root / 'images' / 'train'), 96, 4, 32, hyp=hyp, augment=True,
                                      shuffle=True, workers=2, seed=3, nc=3)
        assert loader.num_workers == 2
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert batches[0][2] == batches[1][2]


def test_cache_ram_and_disk(shapes_root):
    ds = LoadImagesAndLabels(shapes_root / 'images' / 'val', img_size=64, cache_images='ram')
    assert all(x is not None and x.shape == (64, 64, 3) for x in ds.ims)
    ref = ds[0][0]
    ds = LoadImagesAndLabels(shapes_root / 'images' / 'val', img_size=64, cache_images='disk')
    assert all(f.is_file() for f in ds.npy_files) and torch.equal(ds[0][0], ref)
    for f in ds.npy_files:
        f.unlink()
    with pytest.raises(ValueError, match='cache must be'):
        LoadImagesAndLabels(shapes_root / 'images' / 'val', img_size=64, cache_images='gpu')


def test_txt_list_single_cls_and_image_weights(shapes_root):
    lst = shapes_root / 'val.txt'
    lst.write_text(''.join(f'./images/val/{p.name}\n' for p in sorted((shapes_root / 'images' / 'val').iterdir())))
    ds = LoadImagesAndLabels(lst, img_size=64, single_cls=True)
    assert len(ds) == 4 and (lst.with_suffix('.cache')).is_file()
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)

    ds = LoadImagesAndLabels(shapes_root / 'images' / 'val', img_size=64, image_weights=True, rect=True)
    assert not ds.rect  # image weights and rect exclude each other
    has1 = [bool((lb[:, 0] == 1).any()) for lb in ds.labels]
    assert any(has1)
    random.seed(0)
    ds.update_image_weights(np.array([0.0, 1.0, 0.0]))
    assert len(ds.indices) == ds.n and all(has1[i] for i in ds.indices)


def test_class_and_image_weights_golden():
    labels = [np.array([[0, .5, .5, .1, .1], [0, .5, .5, .1, .1]]), np.array([[1, .5, .5, .1, .1]])]
    assert labels_to_class_weights(labels, nc=3).tolist() == pytest.approx([0.2, 0.4, 0.4])
    assert labels_to_image_weights(labels, nc=3, class_weights=np.array([1., 10., 100.])).tolist() == [2., 10.]


# ---------------------------------------------------------------- data yaml
def test_hyp_files_have_upstream_keys_and_values():
    hyps = {k: yaml_load(ROOT / 'data' / 'hyps' / f'hyp.scratch-{k}.yaml') for k in ('low', 'med', 'high')}
    for h in hyps.values():
        assert list(h) == HYP_KEYS
    assert (hyps['low']['lrf'], hyps['low']['cls'], hyps['low']['obj'], hyps['low']['scale']) == (0.01, 0.5, 1.0, 0.5)
    med = hyps['med']
    assert (med['lrf'], med['scale'], med['mixup'], med['copy_paste']) == (0.1, 0.9, 0.1, 0.0)
    assert (hyps['high']['mixup'], hyps['high']['copy_paste'], hyps['high']['obj']) == (0.1, 0.1, 0.7)


def test_check_dataset_paths_names_and_errors(tmp_path):
    _write(tmp_path / 'ds', 'a.png', np.zeros((32, 32, 3), np.uint8), '', split='val')
    d = check_dataset({'path': str(tmp_path / 'ds'), 'train': 'images/val', 'val': ['images/val'], 'names': ['a', 'b']})
    assert d['names'] == {0: 'a', 1: 'b'} and d['nc'] == 2 and d['test'] is None
    assert d['train'] == str(tmp_path / 'ds' / 'images' / 'val') and d['val'] == [d['train']]
    rel = check_dataset({'path': os.path.relpath(tmp_path / 'ds', ROOT), 'train': 'images/val', 'val': 'images/val',
                         'names': {0: 'x'}, 'nc': 1})
    assert rel['path'] == str((tmp_path / 'ds').resolve())  # relative `path` is relative to the repo root
    with pytest.raises(ValueError, match='nc=3 but 2 names'):
        check_dataset({'path': str(tmp_path), 'train': 'a', 'val': 'a', 'names': ['a', 'b'], 'nc': 3})
    with pytest.raises(ValueError, match="'val:' key missing"):
        check_dataset({'train': 'a', 'names': ['a']})
    with pytest.raises(ValueError, match='names must be'):
        check_dataset({'train': 'a', 'val': 'a', 'names': {1: 'a'}})
    with pytest.raises(FileNotFoundError, match=r'Dataset not found: .*nope does not exist; to get it: see README'):
        check_dataset({'path': str(tmp_path), 'train': 'nope', 'val': 'nope', 'names': ['a'], 'download': 'see README'})
    with pytest.raises(ValueError, match="unknown generator 'eval'"):
        check_dataset({'path': str(tmp_path), 'train': 'a', 'val': 'a', 'names': ['a'], 'generator': 'eval'})
    with pytest.raises(FileNotFoundError, match="data yaml 'nothere.yaml' not found"):
        check_dataset('nothere.yaml')


def test_check_dataset_generates_embedded_set(tmp_path, monkeypatch):
    calls = []

    def small(path):
        calls.append(path)
        return generate_shapes_dataset(path, n_train=2, n_val=2, imgsz=64)

    monkeypatch.setitem(data_yaml.GENERATORS, 'shapes', small)
    cfg = {**yaml_load(ROOT / 'data' / 'shapes.yaml'), 'path': str(tmp_path / 'gen')}
    d = check_dataset(cfg)
    assert len(calls) == 1 and Path(d['val']).is_dir() and Path(d['coco_json']).is_file()
    assert d['names'] == {0: 'circle', 1: 'rectangle', 2: 'triangle'} and d['nc'] == 3
    check_dataset(cfg)
    assert len(calls) == 1  # present now: not generated again
    with pytest.raises(FileNotFoundError, match='autogenerate'):
        check_dataset({**cfg, 'path': str(tmp_path / 'other')}, autogenerate=False)


def test_repo_data_yamls():
    shapes = check_dataset.__globals__['_find_yaml']('shapes.yaml')
    assert shapes == ROOT / 'data' / 'shapes.yaml'
    for name in ('coco.yaml', 'coco128.yaml'):
        y = yaml_load(ROOT / 'data' / name)
        assert len(y['names']) == 80 and y['names'][0] == 'person' and y['names'][79] == 'toothbrush'
        zips = dataset_zips(y['download'], ROOT / y['path'])  # data, not code
        assert zips and all(z.url.startswith('http') and z.name.endswith('.zip') for z in zips)
        if not (ROOT / y['path']).exists():
            with pytest.raises(FileNotFoundError) as e:
                check_dataset(name, autodownload=False)  # tests download nothing
            assert '\n' not in str(e.value) and 'to get it: http' in str(e.value)
    coco = dataset_zips(yaml_load(ROOT / 'data' / 'coco.yaml')['download'], ROOT / 'datasets' / 'coco')
    assert [z.name for z in needed(coco, ('val',))] == ['coco2017labels.zip', 'val2017.zip']  # val.py: 1 GB, not 27


# ---------------------------------------------------------------- detect.py sources
def _video(path: Path, n: int = 10, h: int = 48, w: int = 64) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (w, h))
    if not vw.isOpened():
        pytest.skip('OpenCV cannot write MJPG video here')
    for i in range(n):
        vw.write(np.full((h, w, 3), 20 * i % 256, np.uint8))
    vw.release()
    return path


def test_load_images_folder_with_corrupt_file_and_video(tmp_path):
    img, _ = _shapes_image(0, 64, 64)
    cv2.imwrite(str(tmp_path / 'a.jpg'), img)
    cv2.imwrite(str(tmp_path / 'b.png'), img[:32])
    (tmp_path / 'c.jpg').write_bytes(b'not a jpeg' * 10)
    _video(tmp_path / 'v.avi')
    ds = LoadImages(tmp_path, img_size=64, stride=32)
    assert ds.nf == 4 and len(ds) == 4
    out = list(ds)
    assert ds.skipped == 1
    kinds = [(Path(p).name, cap is not None) for p, _, _, cap, _ in out]
    assert kinds == [('a.jpg', False), ('b.png', False)] + [('v.avi', True)] * 10
    p, im, im0, _, s = out[0]
    assert im.shape == (3, 64, 64) and im.flags['C_CONTIGUOUS'] and im.dtype == np.uint8
    assert np.array_equal(im, im0[..., ::-1].transpose(2, 0, 1))  # RGB CHW of the BGR original
    assert out[1][1].shape == (3, 32, 64)  # auto: minimal stride-multiple padding
    assert out[2][4].startswith('video 4/4 (1/10)') and out[-1][4].startswith('video 4/4 (10/10)')
    frames = [o[2] for o in out[2:]]
    assert [int(f.mean() + 5) // 20 for f in frames] == list(range(10))

    strided = list(LoadImages(str(tmp_path / 'v.avi'), img_size=64, vid_stride=2))
    assert [int(o[2].mean() + 5) // 20 for o in strided] == [1, 3, 5, 7, 9]
    # glob and *.txt list of files
    (tmp_path / 'list.txt').write_text('a.jpg\nb.png\n')
    assert len(list(LoadImages(str(tmp_path / 'list.txt'), img_size=64))) == 2
    assert len(list(LoadImages(str(tmp_path / '*.png'), img_size=64))) == 1
    with pytest.raises(FileNotFoundError, match='does not exist'):
        LoadImages(tmp_path / 'missing.jpg')
    (tmp_path / 'e').mkdir()
    with pytest.raises(FileNotFoundError, match='No images or videos'):
        LoadImages(tmp_path / 'e')


def test_load_streams(tmp_path):
    with pytest.raises(ConnectionError, match='Failed to open stream'):
        LoadStreams(str(tmp_path / 'no_such_stream.avi'))
    streams = LoadStreams(str(_video(tmp_path / 'v.avi', n=30)), img_size=64, stride=32)
    try:
        assert streams.imgs[0].shape == (48, 64, 3) and len(streams) == 1 and streams.rect
    finally:
        streams.close()
