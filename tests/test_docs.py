"""The documentation cannot rot: its examples run, its generated parts match their sources and
its links point at files that exist.

- Every ```python block in README.md and docs/**/*.md runs (commands and output use ```bash
  and ```text, which are not run).
- docs/api.md equals what tools/gen_api.py writes from the docstrings.
- A table marked `<!-- table: PATH -->` is a verbatim copy of lines of the generated file PATH
  (results/*/table.md, benchmarks/*.md), so a rerun that changes the numbers shows up here.
- Relative links and images in README.md and docs/ point at files in the repository.
"""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
TABLE_MARK = re.compile(r"<!-- table: (\S+) -->\n+((?:\|.*\n)+)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _name(page):
    return str(page.relative_to(ROOT))


def _blocks():
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(code, id=f"{_name(page)}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_example_runs(code):
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_api_reference_matches_docstrings():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "tools" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    assert (ROOT / "docs" / "api.md").read_text() == gen_api.render(), (
        "docs/api.md is out of date: run python tools/gen_api.py"
    )


def _copied_tables():
    for page in PAGES:
        for i, (source, table) in enumerate(TABLE_MARK.findall(page.read_text())):
            yield pytest.param(source, table, id=f"{_name(page)}-{i}-{source}")


@pytest.mark.parametrize("source, table", list(_copied_tables()))
def test_copied_table_matches_its_source(source, table):
    path = ROOT / source
    assert path.is_file(), f"{source} does not exist"
    assert table in path.read_text(), f"this table differs from the one in {source}:\n{table}"


def test_some_tables_are_checked():
    assert len(list(_copied_tables())) >= 10


def _links():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if not re.match(r"[a-z]+:|#", target):
                yield pytest.param(page, target.split("#")[0], id=f"{_name(page)}-{target}")


@pytest.mark.parametrize("page, target", list(_links()))
def test_relative_link_exists(page, target):
    assert (page.parent / target).exists(), f"{_name(page)} links to missing {target}"


def test_readme_stays_short():
    """Details belong in docs/; the README is the front page."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
