"""Downloads of official weights and data sets, served from local HTTP servers on 127.0.0.1, never the internet:
resumed transfers (Range), cut connections, corrupt zips, and the data-only ``download:`` entry of data yamls."""
from __future__ import annotations

import contextlib
import http.server
import io
import re
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from utils.data_yaml import check_dataset
from utils.downloads import DownloadError, attempt_download, dataset_zips, needed, safe_download, work_dir


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / 'srv'
    root.mkdir()
    (root / 'yolov5n.pt').write_bytes(b'\x00' * 200_000)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()


def test_existing_file_returned(tmp_path):
    f = tmp_path / 'mine.pt'
    f.write_bytes(b'x')
    assert attempt_download(f) == f


def test_download_official_asset(tmp_path, server):
    dst = tmp_path / 'w' / 'yolov5n.pt'
    assert attempt_download(dst, base_url=server) == dst
    assert dst.stat().st_size == 200_000
    assert not list(dst.parent.glob('*.part'))


def test_download_failure_is_one_line(tmp_path, server):
    dst = tmp_path / 'yolov5x.pt'  # not served -> HTTP 404
    with pytest.raises(DownloadError) as e:
        attempt_download(dst, base_url=server)
    msg = str(e.value)
    assert '\n' not in msg and 'releases' in msg and 'yolov5x.pt' in msg
    assert not dst.exists()


def test_offline_is_one_line(tmp_path):
    with pytest.raises(DownloadError, match='Download it manually'):
        attempt_download(tmp_path / 'yolov5s.pt', base_url='http://127.0.0.1:9')  # nothing listens on port 9


def test_unknown_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        attempt_download(tmp_path / 'nope.pt')


# ---------------------------------------------------------------------------------------------- resumable transfers
class RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` {url path: bytes}; honours ``Range: bytes=N-`` when ``ranges``; a response to a path in
    ``cut`` {url path: n} stops after n bytes and closes the connection. Records (path, Range header) of requests."""
    daemon_threads = True

    def __init__(self, ranges: bool = True):
        super().__init__(('127.0.0.1', 0), RangeHandler)
        self.files, self.cut, self.ranges, self.requests = {}, {}, ranges, []

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}'


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv, rng = self.server, self.headers.get('Range')
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r'bytes=(\d+)-', rng).group(1)) if rng and srv.ranges else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(body)}')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if srv.ranges:
            self.send_header('Accept-Ranges', 'bytes')
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if self.path in srv.cut:
            data = data[:srv.cut[self.path]]
            self.close_connection = True
        self.wfile.write(data)


@contextlib.contextmanager
def serving(ranges: bool):
    """A RangeServer on a background thread for the block, shut down and closed after it."""
    srv = RangeServer(ranges)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def rserver():
    with serving(ranges=True) as srv:
        yield srv


@pytest.fixture()
def plain_server():
    with serving(ranges=False) as srv:
        yield srv


PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes


def test_cut_transfer_resumes_with_range(tmp_path, rserver):
    rserver.files['/f.bin'] = PAYLOAD
    rserver.cut['/f.bin'] = 100_000  # every response stops after 100 kB
    dst = safe_download(f'{rserver.url}/f.bin', tmp_path / 'f.bin', retries=3)
    assert dst.read_bytes() == PAYLOAD and not (tmp_path / 'f.bin.part').exists()
    assert [r for _, r in rserver.requests] == [None, 'bytes=100000-', 'bytes=200000-', 'bytes=300000-']


def test_cut_without_range_support_fails_cleanly(tmp_path, plain_server):
    plain_server.files['/f.bin'] = PAYLOAD
    plain_server.cut['/f.bin'] = 100_000
    with pytest.raises(DownloadError) as e:
        safe_download(f'{plain_server.url}/f.bin', tmp_path / 'f.bin', retries=3)
    msg = str(e.value)
    assert '\n' not in msg and 'f.bin failed (connection closed with 207200 bytes to go)' in msg, msg
    assert len(plain_server.requests) == 2  # the retry made no progress (restarted from 0): no more attempts
    assert list(tmp_path.iterdir()) == []  # no .part, no file


def test_partial_kept_and_resumed_by_next_call(tmp_path, rserver):
    rserver.files['/f.bin'] = PAYLOAD
    rserver.cut['/f.bin'] = 50_000
    with pytest.raises(DownloadError, match=r'100000 bytes kept in .*f\.bin\.part, run again to resume'):
        safe_download(f'{rserver.url}/f.bin', tmp_path / 'f.bin', retries=1)
    assert not (tmp_path / 'f.bin').exists() and (tmp_path / 'f.bin.part').stat().st_size == 100_000
    del rserver.cut['/f.bin']
    assert safe_download(f'{rserver.url}/f.bin', tmp_path / 'f.bin').read_bytes() == PAYLOAD
    assert rserver.requests[-1] == ('/f.bin', 'bytes=100000-')


def test_complete_part_is_not_fetched_again(tmp_path, rserver):
    rserver.files['/f.bin'] = PAYLOAD
    (tmp_path / 'f.bin.part').write_bytes(PAYLOAD)  # e.g. killed between the last byte and the rename
    assert safe_download(f'{rserver.url}/f.bin', tmp_path / 'f.bin').read_bytes() == PAYLOAD
    assert rserver.requests == [('/f.bin', f'bytes={len(PAYLOAD)}-')]  # answered 416 */size: already whole


# ---------------------------------------------------------------------------------------------- data sets
def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


IMG = bytes(range(256)) * 40  # stands in for an image: only the files' presence is checked here


def tiny_set(root: Path, download) -> dict:
    """A data dict of a 'tiny' set under root/datasets (images/val, images/train) with the given download value."""
    return {'path': str(root / 'datasets' / 'tiny'), 'train': 'images/train', 'val': 'images/val',
            'names': ['a', 'b'], 'download': download}


def tiny_zip(split: str = 'val', n: int = 3, prefix: str = 'tiny/images/') -> bytes:
    return make_zip({f'{prefix}{split}/{i}.jpg': IMG for i in range(n)})


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / 'datasets').rglob('*')) if (root / 'datasets').exists() \
        else []


def test_dataset_zip_url_downloaded_once(tmp_path, rserver):
    rserver.files['/tiny.zip'] = tiny_zip()
    data = tiny_set(tmp_path, f'{rserver.url}/tiny.zip')
    d = check_dataset(data)
    val = Path(d['val'])
    assert sorted(p.name for p in val.iterdir()) == ['0.jpg', '1.jpg', '2.jpg']
    assert (val / '0.jpg').read_bytes() == IMG
    assert (Path(d['path']) / '.downloaded' / 'tiny.zip').is_file()
    assert not work_dir(d['path']).exists() and not list((tmp_path / 'datasets').glob('*.zip*'))
    check_dataset(data)
    assert len(rserver.requests) == 1  # complete: not fetched again


def test_dataset_list_fetches_only_what_the_split_needs(tmp_path, rserver):
    rserver.files['/labels.zip'] = make_zip({'tiny/labels/val/0.txt': b'0 0.5 0.5 0.2 0.2\n',
                                             'tiny/val.txt': b'./images/val/0.jpg\n'})
    rserver.files['/val.zip'] = tiny_zip(prefix='')
    rserver.files['/train.zip'] = tiny_zip('train', prefix='')
    data = tiny_set(tmp_path, [{'url': f'{rserver.url}/labels.zip', 'dir': '..'},
                               {'url': f'{rserver.url}/val.zip', 'dir': 'images', 'split': 'val'},
                               {'url': f'{rserver.url}/train.zip', 'dir': 'images', 'split': 'train'}])
    d = check_dataset(data)  # val.py: only the val split
    root = Path(d['path'])
    assert (root / 'labels' / 'val' / '0.txt').is_file() and (root / 'images' / 'val' / '2.jpg').is_file()
    assert [p for p, _ in rserver.requests] == ['/labels.zip', '/val.zip']
    d = check_dataset(data, splits=('train', 'val'))  # train.py: the train images are added
    assert [p for p, _ in rserver.requests][2:] == ['/train.zip'] and len(list(Path(d['train']).iterdir())) == 3


def test_half_installed_set_is_not_taken_for_complete(tmp_path, rserver):
    """A marker folder without every marker (e.g. killed while moving files into place) means: incomplete."""
    rserver.files['/tiny.zip'] = tiny_zip()
    data = tiny_set(tmp_path, f'{rserver.url}/tiny.zip')
    d = check_dataset(data)
    (Path(d['path']) / '.downloaded' / 'tiny.zip').unlink()
    (Path(d['val']) / '2.jpg').unlink()  # the files look present (val exists) but one is missing
    check_dataset(data)
    assert len(rserver.requests) == 2 and (Path(d['val']) / '2.jpg').is_file()


def test_corrupt_zip_one_line_and_nothing_left(tmp_path, rserver):
    good = tiny_zip(n=6)
    rserver.files['/tiny.zip'] = good[:len(good) // 2] + b'\x00' * (len(good) - len(good) // 2)
    data = tiny_set(tmp_path, f'{rserver.url}/tiny.zip')
    for _ in range(2):  # a second run is not fooled by anything the first left
        with pytest.raises(DownloadError) as e:
            check_dataset(data)
        msg = str(e.value)
        assert '\n' not in msg and msg.startswith('Dataset not found: ') and 'tiny.zip is not a valid zip' in msg
        assert 'run again to fetch it anew' in msg
        assert leftovers(tmp_path) == []
    bad_crc = bytearray(good)  # intact structure, damaged data: caught by the CRC check while unpacking
    i = good.index(b'tiny/images/val/3.jpg') + len('tiny/images/val/3.jpg') + 10
    bad_crc[i] ^= 0xFF
    rserver.files['/tiny.zip'] = bytes(bad_crc)
    with pytest.raises(DownloadError, match='not a valid zip archive'):
        check_dataset(data)
    assert leftovers(tmp_path) == []


def test_dataset_cut_without_range_leaves_nothing(tmp_path, plain_server):
    z = tiny_zip(n=20)
    plain_server.files['/tiny.zip'] = z
    plain_server.cut['/tiny.zip'] = len(z) // 3
    with pytest.raises(DownloadError, match='connection closed with'):
        check_dataset(tiny_set(tmp_path, f'{plain_server.url}/tiny.zip'))
    assert leftovers(tmp_path) == []


def test_dataset_cut_with_range_completes(tmp_path, rserver):
    z = tiny_zip(n=20)
    rserver.files['/tiny.zip'] = z
    rserver.cut['/tiny.zip'] = len(z) // 3 + 1
    d = check_dataset(tiny_set(tmp_path, f'{rserver.url}/tiny.zip'))
    assert len(list(Path(d['val']).iterdir())) == 20 and len(rserver.requests) == 3


def test_dataset_offline_one_line(tmp_path):
    data = tiny_set(tmp_path, 'http://127.0.0.1:9/tiny.zip')  # nothing listens on port 9
    with pytest.raises(DownloadError) as e:
        check_dataset(data)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('Dataset not found: ')
    assert 'downloading http://127.0.0.1:9/tiny.zip failed' in msg
    assert leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match='to get it: http://127.0.0.1:9/tiny.zip'):
        check_dataset(data, autodownload=False)


def test_zip_members_stay_inside(tmp_path, rserver):
    rserver.files['/tiny.zip'] = make_zip({'tiny/images/val/0.jpg': IMG, '../../escape.txt': b'x',
                                           '/abs.txt': b'x'})
    check_dataset(tiny_set(tmp_path, f'{rserver.url}/tiny.zip'))
    assert not (tmp_path.parent / 'escape.txt').exists() and not Path('/abs.txt').exists()
    assert (tmp_path / 'datasets' / 'escape.txt').is_file()  # '..' parts dropped by zipfile


def test_download_entry_is_data_never_code(tmp_path):
    path = tmp_path / 'datasets' / 'tiny'
    code = "import os\nos.system('touch pwned')\n"
    with pytest.raises(FileNotFoundError, match="its 'download' script is not run by this project"):
        check_dataset(tiny_set(tmp_path, code))
    assert dataset_zips('bash data/scripts/get_coco.sh', path) is None  # prose / commands: a hint, not a download
    for bad, why in ((['file:///etc/passwd'], 'not an http'), ([{'url': 'http://x/a.zip', 'run': 'x'}], 'not an http'),
                     ('http://x/a.tar.gz', 'only .zip'), ([{'url': 'http://x/a.zip', 'dir': '../..'}], 'is outside'),
                     ([{'url': 'http://x/a.zip', 'split': 'extra'}], 'not one of'),
                     ({'url': 'http://x/a.zip'}, 'list')):
        with pytest.raises(ValueError, match=why):
            dataset_zips(bad, path)
    z = dataset_zips([{'url': 'http://x/l.zip'}, {'url': 'https://x/v.zip?dl=1', 'dir': 'images', 'split': 'val'}],
                     path)
    assert [(x.name, x.dir, x.split) for x in z] == [('l.zip', tmp_path / 'datasets', None),
                                                      ('v.zip', path / 'images', 'val')]
    assert [x.name for x in needed(z, ('train',))] == ['l.zip']
