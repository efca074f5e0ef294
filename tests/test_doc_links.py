"""Every relative link in README.md and docs/*.md points to a file of the repository (a moved or renamed results
file or document would otherwise leave the reader a dead link), and every anchor into a document (README.md,
docs/*.md) names one of its headings. An anchor into a results report is the results table's teacher variant
(``FILE.md#VARIANT``, benchmarks/results_table.py), not a heading, and is not checked here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`[^`]*`")  # `bbox_embed[l](h)` in a code span is no link


def _anchors(md: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    heads = [ln.lstrip("#").strip() for ln in md.read_text().splitlines() if re.match(r"#{1,6} ", ln)]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def _relative_links(doc: Path) -> list[str]:
    links = LINK.findall(CODE.sub("", doc.read_text()))
    return [t for t in links if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc):
    dead = []
    for target in _relative_links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve()
        if not file.exists():
            dead.append(target)
        elif anchor and file in DOCS and anchor not in _anchors(file):
            dead.append(target)
    assert not dead, f"{doc.relative_to(REPO)}: links to nothing: {dead}"


def test_the_check_sees_a_dead_link(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n[a](missing.md) [b](x.md#title) [c](x.md#nope) [d](https://e.org) `f[l](h)`\n")
    assert _relative_links(doc) == ["missing.md", "x.md#title", "x.md#nope"]
    assert _anchors(doc) == {"title"}
