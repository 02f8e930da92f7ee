"""The non-Linux branches, forced here: the real NPU user runs Windows on Snapdragon (onnxruntime-qnn ships no
Linux aarch64 wheel), so code that only works on Linux never reaches the NPU."""

from __future__ import annotations

import subprocess
import sys
import types

from edgeinfer.backends import base


def test_cpu_name_on_windows_comes_from_the_registry(monkeypatch):
    opened = []

    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def open_key(root, path):
        opened.append(path)
        return Key()

    fake = types.SimpleNamespace(HKEY_LOCAL_MACHINE="HKLM", OpenKey=open_key,
                                 QueryValueEx=lambda key, name: ("Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU ", 1))
    monkeypatch.setitem(sys.modules, "winreg", fake)
    assert base.cpu_model("Windows") == "Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU"
    assert opened == [r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"]


def test_cpu_name_on_macos_comes_from_sysctl(monkeypatch):
    def run(args, **kwargs):
        assert args == ["sysctl", "-n", "machdep.cpu.brand_string"]
        return subprocess.CompletedProcess(args, 0, stdout="Apple M3 Pro\n")

    monkeypatch.setattr(base.subprocess, "run", run)
    assert base.cpu_model("Darwin") == "Apple M3 Pro"


def test_cpu_name_falls_back_when_the_platform_says_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "winreg", None)  # import fails, as on a Linux host asked for Windows
    monkeypatch.setattr(base.platform, "processor", lambda: "")
    monkeypatch.setattr(base.platform, "machine", lambda: "ARM64")
    assert base.cpu_model("Windows") == "ARM64"


def _tree(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_force_export_off_linux_swaps_by_two_renames_and_keeps_the_old_package_until_the_new_is_in(tmp_path, monkeypatch):
    """Windows has no renameat2: the old package is set aside, the new one renamed in, the old one deleted."""
    import ctypes

    from edgeinfer.export import atomic
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions

    out = tmp_path / "pkg"
    export("preset:tiny-qwen2", out, ExportOptions(context_length=64), progress=False)
    monkeypatch.setattr(atomic.sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(AssertionError("renameat2 on Windows")))
    renames = []
    real_rename = atomic.os.rename
    monkeypatch.setattr(atomic.os, "rename", lambda a, b: (renames.append((a.name, b.name)), real_rename(a, b)))
    export("preset:tiny-llama", out, ExportOptions(context_length=64), force=True, progress=False)
    assert [b for _, b in renames] == [f".pkg.old-{__import__('os').getpid()}", "pkg"]
    assert "tiny-llama" in (out / "manifest.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # nothing set aside is left behind


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    """Killed after the old package was set aside and before the new one moved in: the next export puts it back."""
    import os

    from edgeinfer.export import atomic
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions

    out = tmp_path / "pkg"
    export("preset:tiny-qwen2", out, ExportOptions(context_length=64), progress=False)
    before = _tree(out)
    monkeypatch.setattr(atomic.sys, "platform", "win32")
    real_rename = atomic.os.rename

    def killed_after_first(a, b):
        real_rename(a, b)
        raise SystemExit("killed")  # nothing after the first rename runs, as under kill -9

    monkeypatch.setattr(atomic.os, "rename", killed_after_first)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing
    try:
        export("preset:tiny-llama", out, ExportOptions(context_length=64), force=True, progress=False)
    except SystemExit:
        pass
    monkeypatch.undo()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".pkg.old-{os.getpid()}"
    assert not out.exists() and _tree(aside) == {**before, atomic.STAGING_MARKER: _tree(aside)[atomic.STAGING_MARKER]}
    aside.rename(tmp_path / f".pkg.old-{dead.pid}")  # as if this process had died
    atomic._remove_stale(out)
    assert _tree(out) == before
