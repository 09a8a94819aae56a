"""Shared test fixtures: repository root on sys.path, paths to upstream fixture checkpoints."""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UPSTREAM = ROOT.parent / 'shared' / 'fixtures' / 'upstream'

# onnx and onnxruntime are optional (the commented block of requirements.txt): a test that needs either carries
# @pytest.mark.onnx and is skipped, with the install line, where one is missing. The decision is made here, in the
# test process, also for tests that run them in a subprocess. CI runs `pytest -m onnx` after installing them.
ONNX_MISSING = [m for m in ('onnx', 'onnxruntime') if importlib.util.find_spec(m) is None]
# openvino and nncf (OpenVINO export and runtime, its INT8 path) are optional the same way: marker `openvino`
OPENVINO_MISSING = [m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf') if importlib.util.find_spec(m) is None]


def pytest_configure(config):
    config.addinivalue_line('markers', 'onnx: needs the optional packages onnx and onnxruntime (skipped without)')
    config.addinivalue_line('markers', 'openvino: needs the optional packages onnx, onnxruntime, openvino and nncf '
                                       '(skipped without)')


def pytest_collection_modifyitems(config, items):
    for marker, missing, packages in (('onnx', ONNX_MISSING, 'onnx onnxruntime'),
                                      ('openvino', OPENVINO_MISSING, 'onnx onnxruntime openvino nncf')):
        if missing:
            skip = pytest.mark.skip(reason=f"{' and '.join(missing)} not installed (optional): pip install {packages}")
            for item in items:
                if item.get_closest_marker(marker):
                    item.add_marker(skip)


@pytest.fixture(scope='session')
def upstream_dir() -> Path:
    if not UPSTREAM.is_dir():
        pytest.skip(f'upstream fixtures not found at {UPSTREAM}')
    return UPSTREAM


def shapes_subset(root: Path, n_train: int, n_val: int) -> Path:
    """A data yaml in ``root`` listing the first n_train / n_val images of the embedded shapes set."""
    from utils.data_yaml import check_dataset

    d = check_dataset('shapes.yaml')  # generates the set offline on first use
    for split, n in (('train', n_train), ('val', n_val)):
        files = sorted(Path(d[split]).glob('*.jpg'))[:n]
        (root / f'{split}.txt').write_text('\n'.join(str(f) for f in files) + '\n')
    f = root / 'tiny.yaml'
    f.write_text(f'path: {root}\ntrain: train.txt\nval: val.txt\nnames: {{0: circle, 1: rectangle, 2: triangle}}\n')
    return f


@pytest.fixture(autouse=True)
def _restore_yolov5_logger():
    """CLI entry points call set_logging(), which stops propagation to the root logger; put the 'yolov5' logger
    back to its unconfigured state before and after each test, so that caplog-based tests see its records whatever
    ran before them (module-scoped fixtures that run a CLI are set up before this fixture)."""
    log = logging.getLogger('yolov5')

    def reset() -> None:
        log.setLevel(logging.NOTSET)
        log.propagate = True
        log.handlers[:] = []

    reset()
    yield
    reset()


@pytest.fixture
def log():
    """Lines logged by the 'yolov5' logger (utils.general.LOGGER) during the test (INFO and up)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger('yolov5')
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
