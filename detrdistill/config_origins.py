"""Where each config key came from, and config errors that name that place and the key meant.

A resolved config is built from three layers: the defaults, a YAML file, then ``--set`` overrides (the CLI's
``--output-dir`` / ``--teacher`` are overrides too). :class:`Origins` records, for every key path the file or an
override wrote, where it was written: ``configs/x.yaml:12`` (its line) or ``--set train.max_step=5``.
:func:`format_validation_error` turns pydantic's first error into one line that starts with that place and, for an
unknown key, suggests the nearest valid one (difflib)::

    --set train.max_step=5: train.max_step: unknown key; did you mean train.max_steps? (detrdistill config show lists every key)

Only pyyaml, pydantic and the standard library are used: config errors are reported before torch is imported.
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["Origins", "yaml_key_lines", "format_validation_error", "suggest_key", "section_model", "all_keys",
           "LIST_KEYS_HINT"]

LIST_KEYS_HINT = "detrdistill config show lists every key"

Path_ = tuple[str, ...]


def yaml_key_lines(text: str) -> dict[Path_, int]:
    """{key path: 1-based line} of every mapping key in a YAML document (``{}`` when it is not a mapping)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[Path_, int] = {}

    def walk(n, prefix: Path_) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        for k, v in n.value:
            if isinstance(k, yaml.ScalarNode):
                path = (*prefix, str(k.value))
                lines[path] = k.start_mark.line + 1
                walk(v, path)

    walk(node, ())
    return lines


@dataclass
class Origins:
    """Where keys were set: ``file`` (its name, or None) with its key lines, and the overrides in order."""
    file: str | None = None
    file_lines: dict[Path_, int] = field(default_factory=dict)
    overrides: dict[Path_, str] = field(default_factory=dict)  # key path -> how the user wrote it

    def add_override(self, key: str, label: str) -> None:
        path = tuple(key.split("."))
        for p in [p for p in self.overrides if p[:len(path)] == path]:  # a whole section replaced
            del self.overrides[p]
        self.overrides[path] = label

    def of(self, path: Path_) -> str | None:
        """Where ``path`` (or the closest enclosing key) was set; None when only the defaults provide it."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            if prefix in self.overrides:
                return self.overrides[prefix]
            if prefix in self.file_lines:
                return f"{self.file}:{self.file_lines[prefix]}"
        inside = [label for p, label in self.overrides.items() if p[:len(path)] == path]  # e.g. an unknown section
        return inside[-1] if inside else None

    def describe(self, path: Path_) -> str:
        """:meth:`of`, else the file as a whole (or ``defaults``)."""
        return self.of(path) or self.file or "defaults"

    def describe_missing(self, path: Path_) -> str:
        """Where the section holding the missing key ``path`` was started: an override that set a sibling key
        (``--set data.train.ann_file=...`` for a missing ``data.train.image_dir``) when neither the file nor an
        override names the section itself; else :meth:`describe`."""
        parent = path[:-1]
        if parent and parent not in self.overrides and parent not in self.file_lines:
            siblings = [label for p, label in self.overrides.items()
                        if len(p) > len(parent) and p[:len(parent)] == parent]
            if siblings:
                return siblings[-1]
        return self.describe(path)


def _models_in(annotation) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def section_model(root: type[BaseModel], path: Path_) -> type[BaseModel] | None:
    """The pydantic model of the section at ``path`` (``()`` = ``root``), None when ``path`` is not a section."""
    model = root
    for part in path:
        f = model.model_fields.get(part)
        models = _models_in(f.annotation) if f is not None else []
        if not models:
            return None
        model = models[0]
    return model


def all_keys(root: type[BaseModel], prefix: Path_ = ()) -> list[str]:
    """Every leaf key of ``root`` as a dotted path (``train.max_steps``)."""
    out = []
    for name, f in root.model_fields.items():
        models = _models_in(f.annotation)
        if models:
            out.extend(all_keys(models[0], (*prefix, name)))
        else:
            out.append(".".join((*prefix, name)))
    return out


def suggest_key(root: type[BaseModel], path: Path_) -> str | None:
    """The valid key an unknown ``path`` most likely meant: the same name in another section, else the nearest name
    in its own section, else the nearest dotted key anywhere."""
    leaf, parent = path[-1], path[:-1]
    keys = all_keys(root)
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    section = section_model(root, parent)
    if section is not None:
        near = difflib.get_close_matches(leaf, list(section.model_fields), n=1, cutoff=0.6)
        if near:
            return ".".join((*parent, near[0]))
    near = difflib.get_close_matches(".".join(path), keys, n=1, cutoff=0.6)
    return near[0] if near else None


def format_validation_error(err: ValidationError, root: type[BaseModel], origins: Origins) -> str:
    """One line for pydantic's first error: ``<where>: <key>: <what>[ (got ...)][; did you mean ...][ +N more]``."""
    first = err.errors()[0]
    path = tuple(str(p) for p in first["loc"])
    key = ".".join(path) or "<root>"
    kind = first["type"]
    where = origins.describe_missing(path) if kind == "missing" else origins.describe(path)
    msg = str(first["msg"]).removeprefix("Value error, ")
    got = first.get("input")
    hint = ""
    if kind == "extra_forbidden":
        msg = "unknown section" if len(path) == 1 else "unknown key"
        near = suggest_key(root, path)
        hint = f"; did you mean {near}? ({LIST_KEYS_HINT})" if near else f" ({LIST_KEYS_HINT})"
    got_s = "" if kind == "extra_forbidden" or isinstance(got, dict) or f"{got!r}" in msg else f" (got {got!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{where}: {key}: {msg}{got_s}{hint}{more}"
