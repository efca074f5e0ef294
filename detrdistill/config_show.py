"""``detrdistill config show``: the resolved config as YAML, every key with its meaning, default and origin.

The output is itself a valid config (``detrdistill config show > my.yaml`` gives an editable file that loads to the
same values); the comment after each key holds its description (the pydantic ``Field`` description in
:mod:`detrdistill.config`), its default (or that it is required), and where a value other than the default's came
from::

    train:  # when and how long to train, logging, checkpoints
      max_steps: 5                    # overrides epochs when set (default: null; --set train.max_steps=5)

Only pydantic and pyyaml are used (no torch).
"""
from __future__ import annotations

import typing

import yaml
from pydantic import BaseModel

from .config_origins import Origins

__all__ = ["render_config"]

_COMMENT_COLUMN = 34


def _flow(value) -> str:
    """``value`` as one line of YAML (flow style), the way it would be written in a config."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def _section_models(annotation) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc and not doc.startswith(("Usage docs", "!!!")) else ""


def _plain(value):
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _lines(model: BaseModel, origins: Origins, path: tuple[str, ...], indent: int) -> list[str]:
    out = []
    pad = "  " * indent
    for name, f in type(model).model_fields.items():
        value = getattr(model, name)
        key_path = (*path, name)
        sections = _section_models(f.annotation)
        if sections and isinstance(value, BaseModel):
            about = f.description or _doc(type(value))
            out.append(f"{pad}{name}:" + (f"  # {about}" if about else ""))
            out.extend(_lines(value, origins, key_path, indent + 1))
            continue
        required = f.is_required()  # a key with no default (a data split's ann_file, image_dir)
        default = None if required else _plain(f.get_default(call_default_factory=True))
        shown = _flow(_plain(value))
        note = ["required, no default" if required else f"default: {_flow(default)}"]
        where = origins.of(key_path)
        if where is not None and (required or _plain(value) != default):
            note.append(where)
        about = f.description or (_doc(sections[0]) if sections else "")
        if sections and value is None:
            about = f"{about}; keys: {', '.join(sections[0].model_fields)}".lstrip("; ")
        text = f"{pad}{name}: {shown}"
        out.append(f"{text.ljust(_COMMENT_COLUMN)}  # {about + ' ' if about else ''}({'; '.join(note)})")
    return out


def render_config(cfg: BaseModel, origins: Origins) -> str:
    """The YAML text of ``cfg`` with a comment on every key (see the module docstring)."""
    sources = [origins.file or "the defaults"]
    if origins.overrides:
        sources.append(f"{len(origins.overrides)} override{'s' if len(origins.overrides) != 1 else ''} "
                       f"({', '.join(origins.overrides.values())})")
    head = [f"# resolved config: {' + '.join(sources)}",
            "# each key: its meaning (default: value; where a value other than the default came from)"]
    return "\n".join(head + _lines(cfg, origins, (), 0)) + "\n"
