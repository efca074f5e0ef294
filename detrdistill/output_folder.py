"""Claiming an output folder: one writing command at a time, and never over the command's own inputs.

Every command that writes (``train``, ``distill``, ``eval`` (its ``--eval-dir``), ``predict --out``,
``export --out`` (the file's folder), ``demo``) calls :func:`claim_output` before it deletes or writes anything:

1. **Inputs apart** (:func:`check_inputs_apart`): what the command writes (its output folder; for ``eval`` the
   ``eval.json`` it writes, for ``export`` the ``.onnx`` file) may not equal, contain or lie inside any of the
   command's inputs that exist on disk (datasets and image folders, ``model.pretrained``, the teacher, the model
   evaluated or exported, the images given to ``predict``). Refused in one line (:class:`InputInOutputError`).
2. **An exclusive lock** (:class:`FolderLock`): ``fcntl.flock`` on ``<folder>/.detrdistill.lock``, held until
   the command ends. The lock file holds the owner's pid and command line; a second command on the same
   folder is refused in one line naming them (:class:`FolderInUseError`). The operating system releases the
   lock when its process dies (``kill -9`` included), so a lock file left behind never blocks anyone. A
   clean release deletes the lock file, and the folder too when the command created it and left it empty
   (a refused command leaves nothing behind).

Where ``fcntl`` does not exist (Windows) or the file system does not support ``flock`` (some network file
systems), folders are not locked (a warning says so once); the inputs rule still holds.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable

from detrdistill.errors import DetrDistillError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger("detrdistill")

__all__ = ["LOCK_NAME", "OutputFolderError", "FolderInUseError", "InputInOutputError", "FolderLock",
           "check_inputs_apart", "lock_folder", "claim_output"]

LOCK_NAME = ".detrdistill.lock"
_HELD: dict[Path, "FolderLock"] = {}  # folders this process holds (a nested claim of the same folder is shared)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputFolderError(DetrDistillError):
    """An output folder that cannot be claimed (unwritable, in use, holding or inside an input)."""


class FolderInUseError(OutputFolderError):
    """Another process holds the folder's lock; the message names its pid and command."""


class InputInOutputError(OutputFolderError, ValueError):
    """What a command writes would equal, contain or lie inside one of its inputs."""


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def check_inputs_apart(written: str | Path, inputs: Iterable[tuple[str, str | Path | None]],
                       flag: str = "--output-dir") -> None:
    """Raise :class:`InputInOutputError` when ``written`` (a folder or file the command writes) equals, contains or
    lies inside one of ``inputs`` ((what, path) pairs; paths that do not exist, e.g. hub ids, are skipped)."""
    out = _resolved(written)
    for what, path in inputs:
        if not path or not Path(path).expanduser().exists():
            continue
        src = _resolved(path)
        if src == out:
            how = f"is the {what} {path} itself"
        elif out in src.parents:
            how = f"contains the {what} {path}"
        elif src in out.parents:
            how = f"lies inside the {what} {path}"
        else:
            continue
        raise InputInOutputError(f"{written}: {how}, an input of this command, which would be overwritten or "
                                 f"changed; choose another {flag}")


def command_line() -> str:
    """This process's command line as a user would write it: ``detrdistill train ...`` for the CLI."""
    argv = list(sys.argv) or [""]
    head = Path(argv[0]).name
    if head in ("detrdistill", "cli.py", "__main__.py"):
        head = "detrdistill"
    elif head in ("-c", ""):
        head = "python -c ..."
    return " ".join([head, *argv[1:]])[:300]


def _owner(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text())
        return f"pid {info['pid']}: {info['command']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


class FolderLock:
    """The exclusive lock of one output folder (see the module docstring); ``release()`` or use ``with``."""

    def __init__(self, folder: Path, fd: int | None, created: bool):
        self.folder, self.fd, self.created, self.count = folder, fd, created, 1

    @property
    def lock_file(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(_resolved(self.folder), None)
        if self.fd is not None:
            try:  # delete the file only while it is still ours (then anyone waiting on it retries on a new one)
                if os.stat(self.lock_file).st_ino == os.fstat(self.fd).st_ino:
                    os.unlink(self.lock_file)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        if self.created:
            try:
                os.rmdir(self.folder)  # only when empty: a refused command leaves nothing behind
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLock(FolderLock):
    """What processes other than the main one hold (the main one holds the real lock)."""

    def __init__(self):
        super().__init__(Path("."), None, False)

    def release(self) -> None:
        pass


NO_LOCK = _NoLock()


def _unwritable(folder: Path, e: OSError, flag: str) -> OutputFolderError:
    return OutputFolderError(f"{folder}: cannot write here ({e.strerror or type(e).__name__}); fix its permissions "
                             f"or choose another {flag}")


def _try_lock(path: Path, folder: Path, flag: str) -> int | None:
    """An fd holding the lock of ``path`` (None when flock is unsupported here); raises when another holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unwritable(folder, e, flag) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{folder}: in use by another detrdistill process ({_owner(path)}); wait for it "
                                   f"to finish, or choose another {flag}") from None
        except OSError as e:
            os.close(fd)
            if e.errno in _UNSUPPORTED:
                log.warning("%s: this file system does not support locks; nothing stops another process from "
                            "writing into this folder at the same time", folder)
                return None
            raise _unwritable(folder, e, flag) from None
        try:  # the file may have been deleted (released) between our open and our lock: retry on the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def lock_folder(folder: str | Path, flag: str = "--output-dir") -> FolderLock:
    """Create ``folder`` if needed and take its exclusive lock (see the module docstring)."""
    folder = Path(folder)
    key = _resolved(folder)
    held = _HELD.get(key)
    if held is not None:
        held.count += 1
        return held
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(folder, e, flag) from None
    fd = _try_lock(folder / LOCK_NAME, folder, flag) if fcntl is not None else None
    if fd is not None:
        info = {"pid": os.getpid(), "command": command_line(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError as e:
            os.close(fd)
            raise _unwritable(folder, e, flag) from None
    lock = _HELD[key] = FolderLock(folder, fd, created)
    return lock


def claim_output(folder: str | Path, inputs: Iterable[tuple[str, str | Path | None]] = (),
                 flag: str = "--output-dir", written: str | Path | None = None) -> FolderLock:
    """Check that what the command writes (``written``, default ``folder``) is apart from its ``inputs``, then
    lock ``folder``. Use as ``with claim_output(...):`` around everything the command writes."""
    check_inputs_apart(written if written is not None else folder, inputs, flag)
    return lock_folder(folder, flag)
