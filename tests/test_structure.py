"""The shape of the house: no import cycles, one folder for the compression family, cheap package faces, small
modules, a short training loop; and every checkpoint format written before the move still loads.

tests/fixtures/legacy/ was written by commit 11e1670 (before utils/compression/ existed) from one tiny model
(yolov5n.yaml at width 1/32, 50 % magnitude-pruned): sparse.pt (plain), compact.pt (sparse-coded weights),
dns_last.pt (a training checkpoint with weight-DNS state after 3 steps), share_last.pt (with 3-bit weight-sharing
state), shared.pt and shared.deep.pt (the shared model, plain and entropy-coded).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / 'tests' / 'fixtures' / 'legacy'
PACKAGES = ('models', 'utils', 'benchmarks')
SCRIPTS = ('train', 'val', 'detect', 'export', 'compare')


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for the CLIs and every module of models/, utils/ and benchmarks/."""
    mods = {name: ROOT / f'{name}.py' for name in SCRIPTS}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob('*.py'):
            parts = f.relative_to(ROOT).with_suffix('').parts
            mods['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = f
    return mods


def imports_of(file: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules that ``file`` imports anywhere (module level or inside functions), with the packages whose
    __init__ such an import runs."""
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
        for name in names:
            parts = name.split('.')
            out.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1) if '.'.join(parts[:i]) in mods)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_no_import_cycles():
    mods = project_modules()
    graph = {m: imports_of(f, mods) - {m} for m, f in mods.items()}
    # a package's __init__ is run by importing any of its modules: not an edge back into the package
    graph = {m: {n for n in deps if not m.startswith(n + '.')} for m, deps in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_compression_family_is_one_folder():
    old = ('sparsity', 'dns', 'channel_groups', 'channel_pruning', 'channel_dns', 'slimming', 'weight_sharing',
           'huffman', 'sparse_format', 'deep_compression', 'export')
    assert not [n for n in old if (ROOT / 'utils' / f'{n}.py').exists()]
    families = {p.name for p in (ROOT / 'utils' / 'compression').iterdir() if p.is_dir() and p.name != '__pycache__'}
    assert families == {'weight', 'channel', 'deep', 'quant'}


def test_package_face_is_lazy_and_complete():
    code = ('import sys, utils.compression as c; '
            'loaded = [m for m in sys.modules if m.startswith("utils.compression.")]; '
            'print(loaded); assert not loaded; [getattr(c, n) for n in c.__all__]')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)


@pytest.mark.parametrize('leaf', ['utils/compression/layers.py', 'utils/compression/hooks.py',
                                  'utils/compression/deep/huffman.py', 'utils/compression/deep/sparse_format.py'])
def test_leaf_modules_import_only_torch_and_numpy(leaf):
    mods = project_modules()
    assert not imports_of(ROOT / leaf, mods), f'{leaf} imports project modules'


def test_modules_are_small_and_train_loop_short():
    big = {str(f.relative_to(ROOT)): n for f in project_modules().values()
           if (n := len(f.read_text().splitlines())) > 600}
    assert not big, f'modules over 600 lines: {big}'
    fn = next(n for n in ast.parse((ROOT / 'train.py').read_text()).body
              if isinstance(n, ast.FunctionDef) and n.name == 'train')
    assert fn.end_lineno - fn.lineno + 1 < 180


# ---------------------------------------------------------------------------------------------- legacy files
def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in model.state_dict().items()}


def test_legacy_compact_and_deep_files_load_bit_exact():
    sparse, compact = load(LEGACY / 'sparse.pt'), load(LEGACY / 'compact.pt')
    a, b = _weights(sparse['model']), _weights(compact['model'])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shared, deep = _weights(load(LEGACY / 'shared.pt')['model']), _weights(load(LEGACY / 'shared.deep.pt')['model'])
    assert shared.keys() == deep.keys() and all(torch.equal(shared[k], deep[k]) for k in shared)


def test_legacy_training_states_resume():
    from utils.compression.deep.sharing import WeightSharing
    from utils.compression.weight.dns import DNS

    ckpt = load(LEGACY / 'dns_last.pt')
    model = ckpt['model'].float()
    dns = DNS(model, target=0.6, surgery_steps=10)
    dns.load_state_dict(ckpt['dns'])
    # the values the writing commit reads from this file (step 3 of a constant-target surgery from 50 % pruned)
    assert dns.step == 3 and sum(int((~k).sum()) for k in dns.masks()) == 12019
    masked = [m.weight.detach()[~keep] for m, keep in zip(dns.modules, dns.masks())]
    assert sum(t.numel() for t in masked) > 0 and all(not t.any() for t in masked)  # masked weights are zero
    ckpt = load(LEGACY / 'share_last.pt')
    model = ckpt['model'].float()
    share = WeightSharing(model, bits=3)
    share.load_state_dict(ckpt['share'])
    assert all(len(torch.unique(w[w != 0])) <= 8 for w in share.weights())
