"""Atomic package writes: build in a hidden sibling folder, then rename it into place.

An export killed at any point leaves either the old OUT (or nothing) or the complete new one, never half.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError


def check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder: choose another -o path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} exists and is not empty: pass --force to replace it, or choose another -o path")


@contextmanager
def staging_dir(out: Path, force: bool):
    """Yield a temp folder next to OUT; on success it replaces OUT in one rename."""
    out = Path(out).absolute()
    check_destination(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old package
        return
    old = None
    if out.exists():  # no atomic exchange here: two renames, with a window a kill can fall into
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): OUT is never missing, even for an instant."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_stale(out: Path) -> None:
    # Temp folders of exports that were killed (their process is gone) are safe to delete. An old package that a
    # killed --force export had set aside (two-rename fallback) goes back to OUT if OUT is missing.
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.removeprefix(f".{out.name}.{kind}-").split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                if kind == "old" and not out.exists():
                    os.rename(path, out)
                else:
                    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def raise_disk_error(exc: OSError, out: Path) -> None:
    import errno

    if exc.errno == errno.ENOSPC:
        raise ExportError(f"the disk is full while writing {out}: free space and export again (nothing was written)") from None
    raise ExportError(f"cannot write {out}: {exc.strerror or exc}: check the path and permissions") from None
