"""Official-weights download: served from a local HTTP server on 127.0.0.1, never the internet."""
from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest

from utils.downloads import DownloadError, attempt_download


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
