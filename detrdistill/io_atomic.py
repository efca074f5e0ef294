"""Writing files so that a failure never leaves half a file, and is one line, whatever library failed.

:func:`write_atomic` is the package's one temporary-file-and-rename write (text or bytes, flushed and
fsynced before the rename, its temporary file removed when anything fails). :func:`write_guard` wraps
writes done by libraries (``torch.save``, safetensors, ``save_pretrained``, the ONNX exporter, PIL):
whatever they raise when a write fails (``OSError``; ``RuntimeError`` from torch's zip writer, e.g.
``[enforce fail at inline_container.cc:672] . unexpected pos``; ``SafetensorError ... No space left on
device``) becomes one :class:`WriteFailedError` line naming the folder and, for a full disk, the space the
write needed and the space left, after the partial files are removed.

A full disk is recognised by the error number (``ENOSPC`` / ``EDQUOT``), by the library's message ("No space
left", "os error 28", "quota"), or, for torch's zip writer whose message says neither, by the folder's file
system having less free space than the write needed (or under 1 MiB) when the write failed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from detrdistill.errors import DetrDistillError

__all__ = ["WriteFailedError", "write_atomic", "write_guard", "tensor_bytes", "format_bytes"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("no space left", "os error 28", "storagefull", "disk quota", "os error 122")
_LOW_FREE = 1 << 20  # below this, a failed write on that file system is taken for a full disk


class WriteFailedError(DetrDistillError, OSError):
    """A file could not be written (full disk, quota, permissions, I/O error). One line naming the folder;
    the partial files are gone. Also an ``OSError``, so ``except OSError`` around a write still catches it."""


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def tensor_bytes(obj) -> int:
    """Bytes of every tensor inside ``obj`` (nested dicts, lists and tuples): what saving it needs, roughly."""
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _is_full(e: BaseException, free: int | None, need: int | None) -> bool:
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if any(w in str(seen).lower() for w in _FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return free is not None and (free < _LOW_FREE or (need is not None and free < need))


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        p = Path(p)
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink()
        except OSError:
            pass


def _write_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [OSError, RuntimeError]
    try:
        from safetensors import SafetensorError
        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors ships with transformers
        pass
    return tuple(kinds)


def _message(e: BaseException, folder: Path, what: str, need: int | None, full: bool) -> str:
    if full:
        free = _free_bytes(folder)
        space = ", ".join(x for x in (f"needs about {format_bytes(need)}" if need else "",
                                      f"{format_bytes(free)} free" if free is not None else "") if x)
        return (f"{folder}: no space left on the device writing {what}" + (f" ({space})" if space else "")
                + "; free some space or choose another output folder, then rerun (a training run: with --resume)")
    if isinstance(e, OSError) and e.errno is not None:
        from detrdistill.os_errors import os_error_advice
        return f"{folder}: cannot write {what}: {os_error_advice(e)}"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return f"{folder}: cannot write {what} ({type(e).__name__}: {first}); check the disk and rerun"


@contextlib.contextmanager
def write_guard(folder: str | Path, what: str, *, need: int | None = None,
                cleanup: Iterable[str | Path] = ()) -> Iterator[None]:
    """Run a block that writes into ``folder``; when it fails, remove ``cleanup`` (partial files or folders)
    and, for a write failure (``OSError``, ``RuntimeError``, ``SafetensorError``), raise one
    :class:`WriteFailedError` line naming ``folder`` and ``what`` (and, for a full disk, ``need`` bytes and
    the space left). Other exceptions (bugs, Ctrl-C) pass through unchanged, after the clean-up."""
    folder = Path(folder)
    try:
        yield
    except WriteFailedError:
        _remove(cleanup)
        raise
    except _write_errors() as e:
        free = _free_bytes(folder)  # before the clean-up gives the space back
        full = _is_full(e, free, need)
        _remove(cleanup)
        raise WriteFailedError(_message(e, folder, what, need, full)) from e
    except BaseException:
        _remove(cleanup)
        raise


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; best effort where the platform refuses."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed and fsynced, then renamed
    over ``path``: a reader or a crash sees the old file or the new one, never half of one. Any failure removes
    the temporary file and raises one :class:`WriteFailedError` line (a full disk: the space needed). Returns
    ``path``."""
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with write_guard(path.parent, path.name, need=len(payload), cleanup=[tmp]):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)
    return path
