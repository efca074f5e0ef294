"""A generated block of the README: the text between a begin and an end marker, rewritten from committed results
(``benchmarks/demo_table.py``, ``benchmarks/recipe_table.py``, ``benchmarks/results_table.py``) and checked by the tests to be what they render."""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


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


def linked_results(text: str, begin: str, end: str, root: Path) -> list[Path]:
    """The results files a block renders: its ``[file](...md)`` links, as the ``.json`` beside each (a link's
    ``#anchor`` kept: ``x.json#name`` names one part of a file, for a table that renders parts as rows)."""
    return [root / (str(Path(md).with_suffix(".json")) + anchor)
            for md, anchor in re.findall(r"\[file\]\(([^)#]+\.md)(#[^)]*)?\)", read_block(text, begin, end))]


def report_link(results_json: Path, root: Path) -> str:
    """The link a table row gives to a results file: its ``.md`` report, relative to the repository ``root``."""
    return Path(results_json).resolve().relative_to(root).with_suffix(".md").as_posix()


def unusable(results_json: Path, root: Path) -> str | None:
    """Why a results file (``x.json`` or ``x.json#part``) cannot be a row of a README block under ``root``: it does
    not exist, or it lies outside the repository (a row links its report relative to the README); None when it can."""
    path = Path(str(results_json).partition("#")[0])
    if not path.is_file():
        return f"{path}: no such results file (a JSON written by benchmarks/distill.py --out)"
    if not path.resolve().is_relative_to(root.resolve()):
        return (f"{path}: outside this repository ({root}); a README row links its report relative to the README, "
                f"so copy or merge it under benchmarks/results/ first (benchmarks/merge_runs.py)")
    return None


@dataclass(frozen=True)
class ResultsBlock:
    """A README table rendered from results files (``render``: the files -> the table) between two markers."""
    doc: str  # the generating module's docstring (its first paragraph describes the command)
    readme: Path
    begin: str
    end: str
    render: Callable[[list[Path]], str]

    def files(self, text: str) -> list[Path]:
        """The results files the block in ``text`` renders."""
        return linked_results(text, self.begin, self.end, self.readme.parent)

    def main(self, argv: list[str] | None = None) -> int:
        """The command line: print the table, ``--readme`` rewrite the block, ``--check`` exit 1 when the block is
        not what the files it links to render."""
        from detrdistill.io_atomic import write_atomic

        ap = argparse.ArgumentParser(description=self.doc.split("\n\n")[0])
        ap.add_argument("files", nargs="*", type=Path, help="results JSON files, one per row (--check: the README's)")
        mode = ap.add_mutually_exclusive_group()
        mode.add_argument("--readme", action="store_true", help="rewrite the README block")
        mode.add_argument("--check", action="store_true",
                          help="exit 1 when the README block is not what the files render")
        args = ap.parse_args(argv)
        text = self.readme.read_text()
        files = args.files or (self.files(text) if args.check else [])
        if not files:
            ap.error("name the results files")
        for f in files:
            problem = unusable(f, self.readme.parent)
            if problem:
                ap.error(problem)
        table = self.render(files)
        if not (args.readme or args.check):
            print(table)
            return 0
        want = with_block(text, self.begin, self.end, table)
        if args.check:
            if want != text:
                print(f"README block {self.begin} is stale: rerun with --readme FILES", file=sys.stderr)
                return 1
            return 0
        write_atomic(self.readme, want)
        return 0
