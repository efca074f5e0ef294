"""One-line descriptions of operating-system errors (full disk, permissions, a file in the way).

The CLI prints them as ``error: ...`` instead of a traceback: they are expected failures of the
machine, not bugs. ``--debug`` still shows the traceback.
"""
from __future__ import annotations

import errno

_WHAT_TO_DO = {
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOSPC: "no space left on the device; free some space (or choose another --output-dir) and rerun "
                  "with --resume",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun with --resume",
    errno.EACCES: "permission denied; fix the folder's permissions or choose another folder",
    errno.EPERM: "operation not permitted; fix the folder's permissions or choose another folder",
    errno.EROFS: "read-only file system; choose a folder on a writable disk",
    errno.ENOTDIR: "a file is in the way where a folder is expected; move it or choose another folder",
    errno.EEXIST: "a file is in the way where a folder is expected; move it or choose another folder",
    errno.EISDIR: "a folder is in the way where a file is expected; move it or choose another path",
}


def os_error_advice(e: OSError) -> str:
    """``<what happened>; <what to do>`` in one line (no file name)."""
    what = _WHAT_TO_DO.get(e.errno)
    if what is None:
        what = (e.strerror or str(e) or type(e).__name__).splitlines()[0]
    return what


def describe_os_error(e: OSError) -> str:
    """``<file>: <what happened>; <what to do>`` in one line."""
    where = e.filename if e.filename is not None else "(unknown file)"
    return f"{where}: {os_error_advice(e)}"
