"""A generated block of the README: the text between a begin and an end marker, rewritten from committed results
(``benchmarks/demo_table.py``, ``benchmarks/recipe_table.py``) and checked by the tests to be what they render."""
from __future__ import annotations


def _bounds(text: str, begin: str, end: str) -> tuple[int, int]:
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    return i + len(begin), j


def read_block(text: str, begin: str, end: str) -> str:
    """What stands between the markers."""
    i, j = _bounds(text, begin, end)
    return text[i:j]


def with_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with ``body`` (on lines of its own) between the markers."""
    i, j = _bounds(text, begin, end)
    return f"{text[:i]}\n{body}\n{text[j:]}"
