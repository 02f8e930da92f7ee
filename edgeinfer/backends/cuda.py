"""CUDA: onnxruntime-gpu's CUDA execution provider; KV cache and logits stay in GPU memory."""

from __future__ import annotations

import shutil
import subprocess

import onnxruntime as ort

from .base import Availability, Backend, BackendOptions


class CUDABackend(Backend):
    name = "cuda"
    target = "cuda"
    graph_flavour = "dynamic"
    kv_location = "device"
    ort_device = "cuda"

    def availability(self) -> Availability:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return Availability(
                False, "onnxruntime has no CUDA execution provider (onnxruntime-gpu is not installed)",
                "pip install 'edgeinfer[cuda]' (and uninstall the CPU-only onnxruntime)",
            )
        if not gpu_info():
            return Availability(False, "no NVIDIA GPU is visible (nvidia-smi finds none)", "run on a machine with a CUDA GPU and driver")
        return Availability(True)

    def device_description(self) -> str:
        info = gpu_info()
        if not info:
            return "no CUDA GPU"
        return f"{info['name']} ({float(info['memory_mib']) / 1024:.0f} GiB, driver {info['driver']})"

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "cuda_driver": gpu_info().get("driver", "")}

    def providers(self, options: BackendOptions) -> list:
        cuda = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested", **options.provider_options}
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def session_options(self, options: BackendOptions):
        so = super().session_options(options)
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0")
        return so


def gpu_info() -> dict[str, str]:
    """Name, memory and driver of GPU 0, from nvidia-smi (present wherever the NVIDIA driver is)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, memory, driver = (part.strip() for part in line.split(","))
    return {"name": name, "memory_mib": memory, "driver": driver}
