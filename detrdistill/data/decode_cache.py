"""Remember which image files decoded cleanly, so a dataset is decoded in full once, not at every start.

Dataset loading decodes every image (:func:`detrdistill.data.validate.decode_all`), so a file that cannot be read
is reported before training instead of failing a loader worker mid-run. On COCO (118k images) that is minutes at
every start. The cache records, per image folder, each cleanly decoded file with its byte size and modification
time; a file whose size and mtime are unchanged is not decoded again. Failures are never cached (they are
re-checked every time), and a changed file is decoded again. The cache is keyed on the decoding rule
(:data:`detrdistill.data.images.DECODE_RULE`, e.g. EXIF orientation applied): sizes recorded under another rule
are never reused.

Location: ``$DETRDISTILL_CACHE_DIR/decoded/<hash of the folder>.json``, default ``~/.cache/detrdistill``
(``$XDG_CACHE_HOME/detrdistill`` when set). ``DETRDISTILL_DECODE_CACHE=0`` turns it off; ``detrdistill data
validate`` never uses it (an explicit check decodes everything). Writes are atomic (temporary file + rename);
a cache that cannot be read or written is ignored with a debug line: it only ever saves time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["DecodeCache", "cache_root"]

_VERSION = 2


def _rule() -> str:
    from .images import DECODE_RULE
    return DECODE_RULE


def cache_root() -> Path:
    """``$DETRDISTILL_CACHE_DIR``, else ``$XDG_CACHE_HOME/detrdistill``, else ``~/.cache/detrdistill``."""
    if os.environ.get("DETRDISTILL_CACHE_DIR"):
        return Path(os.environ["DETRDISTILL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "detrdistill"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class DecodeCache:
    """Clean decodes of the files under one folder: ``lookup(path) -> (w, h) | None``, ``add(path, size)``,
    ``save()``. ``DecodeCache(None)`` (disabled) remembers nothing."""

    def __init__(self, file: Path | None, folder: Path | None = None):
        self.file, self.folder = file, folder
        self.entries: dict[str, list[int]] = {}
        self.added = 0
        if file is not None and file.is_file():
            try:
                data = json.loads(file.read_text())
                if data.get("version") == _VERSION and data.get("folder") == str(folder) and \
                        data.get("rule") == _rule():
                    self.entries = {k: v for k, v in data.get("files", {}).items()
                                    if isinstance(v, list) and len(v) == 4}
            except (OSError, ValueError, AttributeError) as e:
                log.debug("decode cache %s unreadable (%s); decoding every image", file, e)

    @classmethod
    def for_folder(cls, folder: str | Path) -> "DecodeCache":
        """The cache of image folder ``folder`` (disabled by ``DETRDISTILL_DECODE_CACHE=0``)."""
        folder = Path(folder).expanduser().resolve()
        if os.environ.get("DETRDISTILL_DECODE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
            return cls(None, folder)
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:16]
        return cls(cache_root() / "decoded" / f"{digest}.json", folder)

    @property
    def enabled(self) -> bool:
        return self.file is not None

    def _key(self, path: Path) -> str:
        resolved = Path(path).resolve()
        if self.folder is not None and resolved.is_relative_to(self.folder):
            return str(resolved.relative_to(self.folder))
        return str(resolved)

    def lookup(self, path: Path) -> tuple[int, int] | None:
        """(w, h) when ``path`` decoded cleanly before and its size and mtime are unchanged."""
        if not self.enabled:
            return None
        entry = self.entries.get(self._key(path))
        if entry is None:
            return None
        stamp = _stamp(Path(path))
        return (entry[2], entry[3]) if stamp is not None and tuple(entry[:2]) == stamp else None

    def add(self, path: Path, size: tuple[int, int]) -> None:
        if not self.enabled:
            return
        stamp = _stamp(Path(path))
        if stamp is not None:
            self.entries[self._key(path)] = [stamp[0], stamp[1], int(size[0]), int(size[1])]
            self.added += 1

    def save(self) -> None:
        """Write the cache atomically when something was added (errors only logged)."""
        if not self.enabled or not self.added:
            return
        from detrdistill.io_atomic import write_atomic
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, json.dumps({"version": _VERSION, "rule": _rule(), "folder": str(self.folder),
                                                "files": self.entries}))
            self.added = 0
        except OSError as e:  # WriteFailedError included: the cache only ever saves time
            log.debug("decode cache %s not written (%s)", self.file, e)
