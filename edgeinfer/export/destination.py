"""Where an export may write: a new path, an empty folder, or (with --force) an edgeinfer package; never the
source it reads, nor a folder that holds it or lies inside it.

--force deletes what OUT holds, so a slip of the keyboard (`-o .`, `-o ~`, `-o` the checkpoint folder) must
be refused before anything is read or written, in one line that names the problem and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ExportError
from ..package import MANIFEST


def check_destination(out: Path, force: bool, source: Path | None = None) -> None:
    """Raise ExportError unless an export may write OUT (SOURCE: the file or folder it reads, if any)."""
    out = Path(out)
    if out.is_symlink():
        raise ExportError(f"{out} is a symbolic link: pass the folder it points to, or another -o path")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder: choose another -o path")
    if source is not None and (clash := _clash(out, Path(source))):
        raise ExportError(f"{out} {clash}: an export never writes over its source; choose an -o path outside it")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"{out} exists and is not empty: pass --force to replace it, or choose another -o path")
        if not is_package(out):
            raise ExportError(
                f"{out} is not an edgeinfer package (no {MANIFEST} from edgeinfer export) and --force replaces only "
                "packages: choose another -o path, or empty that folder yourself"
            )


def _clash(out: Path, source: Path) -> str | None:
    # Compared with links resolved: `-o link-to-checkpoint` is the checkpoint.
    out, source_dir, source = out.resolve(), source.is_dir(), source.resolve()
    if out == source:
        return "is the source"
    if source.is_relative_to(out):
        return f"holds the source {source}"
    if source_dir and out.is_relative_to(source):
        return f"lies inside the source folder {source}"
    return None


def is_package(folder: Path) -> bool:
    """FOLDER holds a manifest that edgeinfer export wrote (not necessarily a loadable package)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and (
        "edgeinfer_version" in manifest or "graphs" in manifest
    )
