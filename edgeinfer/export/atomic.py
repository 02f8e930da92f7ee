"""Atomic package writes: build in a hidden sibling folder, then rename it into place.

An export killed at any point leaves either the old OUT (or nothing) or the complete new one, never half.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError
from .destination import check_destination, is_package

# Written into every folder this module may later delete (its staging folder, an old package set aside), so
# that sweeping a killed export's leftovers never deletes a user's folder that merely has a matching name.
STAGING_MARKER = ".edgeinfer-staging"


@contextmanager
def staging_dir(out: Path, force: bool, source: Path | None = None):
    """Yield a temp folder next to OUT; on success it replaces OUT in one rename. SOURCE: see check_destination."""
    out = Path(out).absolute()
    check_destination(out, force, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    _mark(tmp)
    try:
        yield tmp
        check_destination(out, True, source)  # again, as --force would: whatever appeared at OUT meanwhile, only a package is replaced
        _replace(tmp, out)
    except BaseException:
        _delete_marked(tmp)
        raise


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        _mark(out)  # the old package is about to get a temp name: mark it so a sweep may delete it
        if _exchange(tmp, out):
            _unmark(out)
            _delete_marked(tmp)  # tmp now holds the old package
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
            _unmark(out)
        raise
    _unmark(out)
    if old is not None:
        _delete_marked(old)


def _mark(folder: Path) -> None:
    (folder / STAGING_MARKER).write_text(f"edgeinfer export, pid {os.getpid()}\n", encoding="utf-8")


def _unmark(folder: Path) -> None:
    (folder / STAGING_MARKER).unlink(missing_ok=True)


def _delete_marked(folder: Path) -> None:
    """Delete a marked folder, the marker last: a kill midway leaves it marked (or empty) for the next sweep."""
    try:
        for child in folder.iterdir():
            if child.name != STAGING_MARKER:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        _unmark(folder)
        folder.rmdir()
    except OSError:
        pass  # a leftover: the next export's sweep deletes it


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): OUT is never missing, even for an instant.
    False elsewhere (Windows, macOS): the caller falls back to two renames with the old package set aside."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_stale(out: Path) -> None:
    # Temp folders of exports that were killed (their process is gone) are safe to delete. An old package that a
    # killed --force export had set aside (two-rename fallback) goes back to OUT if OUT is missing. Only folders
    # that carry the marker (or are empty) count: a user's own `.out.tmp-123` stays.
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.removeprefix(f".{out.name}.{kind}-").split("-")[0]
            if pid.isdigit() and not _alive(int(pid)) and _left_by_export(path):
                if kind == "old" and not out.exists() and is_package(path):
                    os.rename(path, out)
                    _unmark(out)
                else:
                    _delete_marked(path)


def _left_by_export(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / STAGING_MARKER).is_file() or not any(path.iterdir())


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
