"""Peak memory while a benchmark runs: process RSS (psutil) and, on NVIDIA GPUs, device memory in use."""

from __future__ import annotations

import threading

import psutil



class PeakMemory:
    """Samples in a background thread; use as a context manager around the measured work."""

    def __init__(self, interval_s: float = 0.02, gpu: bool = False):
        self.interval_s = interval_s
        self.gpu = gpu
        self.peak_rss = 0
        self.peak_gpu_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._process = psutil.Process()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def _watch(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval_s):
            self._sample()
            ticks += 1
            if self.gpu and ticks % 25 == 0:  # nvidia-smi is slow: twice a second is plenty
                used = _gpu_used_mib()
                if used is not None:
                    self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, used)

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _gpu_used_mib() -> float | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.splitlines()[0]
        return float(out)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
