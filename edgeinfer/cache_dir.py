"""Where edgeinfer keeps what it makes for the user: bench packages and compiled QNN contexts ($EDGEINFER_CACHE)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import EdgeInferError


def cache_root() -> Path:
    return Path(os.environ.get("EDGEINFER_CACHE", Path.home() / ".cache" / "edgeinfer"))


def private_folder(folder: Path) -> Path:
    """FOLDER created if needed, ours and readable by us alone (0700): other local users may not swap files in."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise EdgeInferError(f"the cache folder {folder} is a link or not yours: remove it, or set EDGEINFER_CACHE elsewhere")
    os.chmod(folder, 0o700)
    return folder
