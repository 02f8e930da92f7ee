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
