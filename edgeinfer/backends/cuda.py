"""CUDA: onnxruntime-gpu's CUDA execution provider; KV cache and logits stay in GPU memory.

Decode steps are captured once as a CUDA graph and replayed (provider option enable_cuda_graph, on by
default here; dynamic_runner.py explains the binding that makes it possible). Set it to "0" in
BackendOptions.provider_options to run every step kernel by kernel.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import replace

import onnxruntime as ort

from ..errors import BackendError
from .base import Availability, Backend, BackendOptions

INSTALL_FIX = "pip install 'edgeinfer[cuda]' (and uninstall the CPU-only onnxruntime: both provide the same module)"
_OFF = ("0", "false", "no", "off")


class CUDABackend(Backend):
    name = "cuda"
    target = "cuda"
    kv_location = "device"
    ort_device = "cuda"

    def availability(self) -> Availability:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return Availability(
                False, f"onnxruntime {ort.__version__} has no CUDA execution provider (onnxruntime-gpu is not installed)",
                INSTALL_FIX,
            )
        if not self.gpu:
            return Availability(False, "no NVIDIA GPU is visible (nvidia-smi finds none)", "run on a machine with a CUDA GPU and driver")
        return Availability(True)

    @functools.cached_property
    def gpu(self) -> dict[str, str]:
        """nvidia-smi asked once per backend: availability, the device name and the versions all read it."""
        return gpu_info()

    def device_description(self) -> str:
        info = self.gpu
        if not info:
            return "no CUDA GPU"
        return describe_gpu(info)

    def versions(self) -> dict[str, str]:
        info = self.gpu
        return {
            **super().versions(),
            "onnxruntime_cuda": ort_cuda_version(),
            "cuda_driver": info.get("driver", ""),
            "cuda_driver_api": info.get("cuda", ""),
            "gpu": info.get("name", ""),
            "gpu_memory_mib": info.get("memory_mib", ""),
        }

    def provider_options(self, options: BackendOptions) -> dict[str, str]:
        return {
            "device_id": "0",
            "arena_extend_strategy": "kSameAsRequested",
            "enable_cuda_graph": "1",
            **{k: str(v) for k, v in options.provider_options.items()},
        }

    def providers(self, options: BackendOptions) -> list:
        return [("CUDAExecutionProvider", self.provider_options(options)), "CPUExecutionProvider"]

    def device_id(self, options: BackendOptions) -> int:
        try:
            return int(self.provider_options(options)["device_id"])
        except ValueError:
            raise BackendError(f"cuda: device_id {options.provider_options['device_id']!r} is not a GPU index: pass 0, 1, ...") from None

    def graph_capture(self, options: BackendOptions) -> bool:
        return self.provider_options(options)["enable_cuda_graph"].strip().lower() not in _OFF

    def candidate_head(self, vocab_size: int, logits_dtype, options: BackendOptions):
        from ..candidates import CandidateHead

        # Run on demand with a host-side temperature: no graph to capture.
        plain = replace(options, provider_options={**options.provider_options, "enable_cuda_graph": "0"})
        return CandidateHead(vocab_size, logits_dtype, self.providers(plain))

    def session_options(self, options: BackendOptions):
        so = super().session_options(options)
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0")
        return so

    def create_session(self, model_path: str, options: BackendOptions, fingerprint: str | None = None) -> ort.InferenceSession:
        self.require()
        _preload_cuda_libraries()
        try:
            return super().create_session(model_path, options)
        except BackendError as exc:
            raise BackendError(f"{exc}{_hint(str(exc), self.graph_capture(options))}") from None


def _hint(message: str, graph_capture: bool) -> str:
    if re.search(r"lib(cublas|cudart|cudnn|cufft|curand)\S*\.so", message):
        return f": the CUDA libraries onnxruntime-gpu {ort.__version__} needs are missing: {INSTALL_FIX}"
    if graph_capture and "graph" in message.lower():
        return ": a node runs off the GPU, so the decode step cannot be a CUDA graph: pass provider option enable_cuda_graph=0"
    return ""


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds pip-installed CUDA/cuDNN libraries (nvidia-* wheels) only after preload_dlls."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # noqa: BLE001 - libraries installed system-wide load without it; session creation reports the rest
        pass


def ort_cuda_version() -> str:
    """The CUDA version onnxruntime-gpu was built with ('' for CPU-only builds)."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return ""
    return str(getattr(build_and_package_info, "cuda_version", "") or "")


def describe_gpu(info: dict[str, str]) -> str:
    cuda = f", CUDA {info['cuda']}" if info.get("cuda") else ""
    return f"{info['name']} ({float(info['memory_mib']) / 1024:.0f} GiB, driver {info['driver']}{cuda})"


def gpu_info() -> dict[str, str]:
    """Name, memory, driver and driver CUDA version of GPU 0, from nvidia-smi (present wherever the driver is)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        line = _nvidia_smi("--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits").splitlines()[0]
        name, memory, driver = (part.strip() for part in line.split(","))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {}
    info = {"name": name, "memory_mib": memory, "driver": driver}
    try:
        found = re.search(r"CUDA Version:\s*([\d.]+)", _nvidia_smi())
    except (OSError, subprocess.SubprocessError):
        found = None
    if found:
        info["cuda"] = found.group(1)
    return info


def _nvidia_smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10, check=True).stdout
