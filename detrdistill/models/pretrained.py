"""Where a named model comes from: a local directory or a Hugging Face hub id, resolved the way transformers does.

Every place a model is named (``--teacher`` / ``distill.teacher``, ``model.pretrained``,
``model.backbone.pretrained``, ``eval --model``, ``predict``, ``export``) goes through :func:`resolve_model`:

* an existing local directory is checked (``config.json`` + readable weights, see
  :mod:`detrdistill.models.model_dir`) and loaded with ``local_files_only=True``;
* anything else that looks like a hub id (``org/name`` or ``name``) is looked up with transformers'
  ``cached_file``: the user's ``HF_HUB_OFFLINE``, ``HF_HOME`` / ``HF_HUB_CACHE`` and token are honoured, files come
  from the local cache when there, downloads happen only when the hub is reachable and allowed;
* a path that does not exist is one line at once, with no network attempt (:class:`ModelNotFoundError`, naming
  what the nearest existing folder holds), when it reads as a local path (:func:`reads_as_local_path`): not
  hub-id shaped (``runs/x/model``, ``./m``, ``~/m``, ``/m``), or ``org/name``-shaped with ``org`` a folder here
  (``runs/nope`` beside ``runs/``) and the id not in the hub cache;
* an id that the hub cannot provide is one line too, saying what was looked for and what to do.

Nothing here switches the hub on or off.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, PathNotFoundError

__all__ = ["ModelSource", "ModelNotFoundError", "resolve_model", "looks_like_hub_id", "reads_as_local_path",
           "check_local_model", "hub_snapshot_dir"]

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class ModelNotFoundError(PathNotFoundError):
    """A model named by a path or hub id that is neither a local directory nor found on the hub / in its cache."""


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` (no leading ``.``, ``/`` or ``~``, at most one ``/``, no ``..``)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith((".json", ".safetensors"))


def reads_as_local_path(name: str | Path) -> str | None:
    """Why ``name``, which does not exist, is read as a local path rather than a hub id (None: it may be a hub id).

    Not hub-id shaped (a leading ``.``, ``/`` or ``~``, more than one ``/``, a file suffix ...), or ``org/name``
    whose ``org`` is a folder in the working directory (``runs/nope``) and which is not in the hub cache. Looks only
    at the local disk (the hub cache included), never at the network."""
    text = str(name)
    if not looks_like_hub_id(text):
        return "not a hub id"
    org = text.split("/", 1)[0] if "/" in text else None
    if org is not None and Path(org).is_dir() and not _in_hub_cache(text):
        return f"{org}/ is a folder here"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # pragma: no cover - an unusual cache layout: not cached
        return False


def _nearest_folder(text: str) -> str:
    """What the deepest existing folder on the way to ``text`` holds (names close to the missing part first)."""
    import difflib

    path = Path(text).expanduser()
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return ""
    try:
        entries = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return ""
    missing = path.relative_to(parent).parts[0] if path.is_relative_to(parent) else path.name
    close = difflib.get_close_matches(missing, entries, n=3, cutoff=0.5)
    shown = close + [e for e in entries if e not in close][:max(0, 6 - len(close))]
    where = "." if str(parent) == "." else str(parent)
    if not shown:
        return f"; {where}/ holds no folders"
    return f"; {where}/ holds {', '.join(shown)}{', ...' if len(entries) > len(shown) else ''}"


def check_local_model(name: str | Path, what: str = "model") -> None:
    """:class:`ModelNotFoundError` (one line, at once, no network) when ``name`` does not exist and reads as a local
    path (:func:`reads_as_local_path`); nothing otherwise."""
    text = str(name)
    if Path(text).expanduser().exists():
        return
    reason = reads_as_local_path(text)
    if reason is None:
        return
    shape = " (read as a path: " + reason + ")" if reason != "not a hub id" else ""
    raise ModelNotFoundError(f"{what}: directory {text!r} does not exist{shape}{_nearest_folder(text)}; give a model "
                             "directory or a Hugging Face hub id such as SenseTime/deformable-detr")


@dataclass(frozen=True)
class ModelSource:
    """name: what the user wrote; path: the local directory (None for a hub id, whose files live in the hub cache);
    config: the parsed ``config.json``."""
    name: str
    path: Path | None
    config: dict = field(repr=False)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def load_arg(self) -> str:
        """The first argument of ``from_pretrained``."""
        return str(self.path) if self.path is not None else self.name

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"local_files_only": True} if self.path is not None else {}

    def find_file(self, filename: str) -> Path | None:
        """The local path of a file beside ``config.json`` (hub ids: through the hub cache), None when absent."""
        if self.path is not None:
            f = self.path / filename
            return f if f.is_file() else None
        from transformers.utils import cached_file
        try:
            resolved = cached_file(self.name, filename, _raise_exceptions_for_missing_entries=False,
                                   _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):
            return None
        return Path(resolved) if resolved else None

    def read_json(self, filename: str) -> dict | None:
        """A JSON file beside ``config.json`` (e.g. ``preprocessor_config.json``), None when the model has none."""
        f = self.find_file(filename)
        return _read_json(f) if f is not None else None


def _read_json(f: Path) -> dict:
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{f}: unreadable JSON ({type(e).__name__}); copy or download the model again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{f}: not a JSON object; copy or download the model again")
    return data


def _offline() -> bool:
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return False


def _hub_cache() -> str:
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def resolve_model(name: str | Path, what: str = "model", check_weights: bool = True) -> ModelSource:
    """The :class:`ModelSource` of a local directory or hub id ``name``; ``what`` names the setting in errors
    (e.g. ``"distill.teacher"``). Raises :class:`ModelNotFoundError` (one line) when it cannot be found."""
    text = str(name)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"{what}: {text!r} is a file, not a model directory (config.json + weights)")
        if check_weights:
            from .model_dir import check_model_dir
            check_model_dir(local)
        else:
            from .model_dir import ModelDirMissing
            if not (local / "config.json").is_file():
                raise ModelDirMissing(f"{local / 'config.json'}: not found; {local} is not a saved model directory")
        return ModelSource(text, local, _read_json(local / "config.json"))
    check_local_model(text, what)  # a missing local-looking path: one line, no network attempt
    return ModelSource(text, None, _read_json(Path(_hub_config_file(text, what))))


def _hub_config_file(name: str, what: str) -> str:
    from transformers.utils import cached_file
    try:
        return cached_file(name, "config.json")
    except (OSError, ValueError) as e:
        if _offline():
            hint = (f"HF_HUB_OFFLINE is set and it is not in the hub cache ({_hub_cache()}); download it once with "
                    f"network access (`hf download {name}`) or give a local directory")
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = f"the hub could not provide it ({first[:160]}); check the id, your network or give a local directory"
        raise ModelNotFoundError(f"{what}: {name!r} is not a local directory and not a model on the Hugging Face "
                                 f"hub: {hint}") from None


def hub_snapshot_dir(name: str, what: str = "model") -> Path:
    """The local folder (hub cache snapshot) of hub model ``name`` with its JSON files and safetensors weights, for
    commands that need a directory (``predict``, ``export``); honours ``HF_HUB_OFFLINE`` like :func:`resolve_model`."""
    resolve_model(name, what=what)  # one-line error when unknown / not cached offline
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors"]))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(f"{what}: cannot fetch {name!r} from the Hugging Face hub ({first[:200]})") from None
