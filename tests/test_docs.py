"""The documentation: README stays a short page, every docs page is reachable, no link is dead, cli.md is current."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')  # [text](target) and ![alt](target)


def links(page: Path) -> list[str]:
    """Relative link targets of a markdown page, without #anchors (http(s), mailto and pure anchors left out)."""
    out = []
    for target in LINK.findall(page.read_text(encoding='utf-8')):
        if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I) or target.startswith('#'):
            continue
        out.append(target.split('#', 1)[0])
    return out


@pytest.mark.slow
def test_cli_md_is_generated_from_the_current_parsers():
    spec = importlib.util.spec_from_file_location('gen_cli', DOCS / 'gen_cli.py')
    gen_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_cli)
    assert (DOCS / 'cli.md').read_text(encoding='utf-8') == gen_cli.render(), \
        'docs/cli.md is stale: run python docs/gen_cli.py'


def test_readme_is_a_short_page():
    n = len(README.read_text(encoding='utf-8').splitlines())
    assert n <= 250, f'README.md has {n} lines (at most 250): move details to docs/'


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t).resolve() for t in links(README)}
    missing = [p.name for p in sorted(DOCS.glob('*.md')) if p.resolve() not in linked]
    assert not missing, f'docs pages not linked from README.md: {missing}'


@pytest.mark.parametrize('page', [README, *sorted(DOCS.glob('*.md'))], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(page):
    dead = [t for t in links(page) if t and not (page.parent / t).exists()]
    assert not dead, f'{page.relative_to(ROOT)} links to missing files: {dead}'
