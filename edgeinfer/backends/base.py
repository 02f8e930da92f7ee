"""The backend interface: one execution provider, what it needs, and how it presents itself."""

from __future__ import annotations

import platform
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile

from ..errors import BackendError, PackageError, last_line


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # why not, when not
    fix: str = ""  # what to do about it

    def __str__(self) -> str:
        return "available" if self.ok else f"{self.reason}: {self.fix}" if self.fix else self.reason


@dataclass
class BackendOptions:
    """Session settings a user may change; each backend fills in its own defaults."""

    threads: int | None = None  # intra-op threads; None = physical cores
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    memory_arena: bool | None = None  # None = the backend's default
    provider_options: dict[str, str] = field(default_factory=dict)  # passed to the execution provider as is
    allow_fallback: bool = False  # qnn: let unsupported nodes run on the CPU instead of failing
    profile: bool = False  # onnxruntime's per-op profiler (writes a JSON trace)


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class Backend(ABC):
    name: str  # registry key and --device value
    target: str  # the package target it runs
    # Other targets whose packages it can also run: the CPU EP runs a qnn package's QDQ graphs, the numerics the
    # NPU must match (`edgeinfer run QNN_PACKAGE --device cpu`, `edgeinfer verify`).
    also_runs: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()  # devices `NAME:VARIANT` may pick (openvino:npu); the constructor takes one
    kv_location: str  # "host" or "device": where the KV cache buffers live
    ort_device: str = "cpu"  # OrtValue device type for buffers bound to this backend
    memory_arena: bool = True  # onnxruntime's CPU arena by default

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here, and if not, why and the fix."""

    @abstractmethod
    def device_description(self) -> str:
        """A human description for bench tables (CPU model and cores, GPU name and memory, NPU/SoC)."""

    @abstractmethod
    def providers(self, options: BackendOptions) -> list:
        """The provider list (names or (name, options) pairs) for InferenceSession."""

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__}

    def device_id(self, options: BackendOptions) -> int:
        """Which device of this kind the sessions run on (buffers bound to them must live there too)."""
        return 0

    def package_options(self, precision: str, options: BackendOptions) -> BackendOptions:
        """OPTIONS with what a package of PRECISION needs on this backend (the user's own settings win)."""
        return options

    def graph_capture(self, options: BackendOptions) -> bool:
        """Whether sessions from OPTIONS capture and replay device graphs (each run must then name its graph)."""
        return False

    def shared_memory(self) -> ort.OrtMemoryInfo | None:
        """Host memory the device reads and writes in place (the QNN HTP's rpcmem), for the buffers a runner binds
        to this backend's sessions; None: plain CPU memory, which the CPU EP reads in place and an NPU copies in and
        out each run. Known once a session exists."""
        return None

    def reads_bound_inputs_in_place(self) -> bool:
        """Whether host buffers bound once to a session (IOBinding) are read where they are at every run. False where
        onnxruntime copies a bound input into the EP's own memory when it is bound (the OpenVINO plugin): runners then
        feed each run's inputs afresh."""
        return True

    def candidate_head(self, vocab_size: int, logits_dtype, options: BackendOptions):
        """A CandidateHead beside this backend's logits when the host would pay to read whole rows (a GPU);
        None: the sampler reads the row where it is."""
        return None

    def session_options(self, options: BackendOptions) -> ort.SessionOptions:
        so = ort.SessionOptions()
        if options.graph_optimization not in _OPT_LEVELS:
            raise BackendError(
                f"unknown graph optimization {options.graph_optimization!r}: choose one of {', '.join(_OPT_LEVELS)}"
            )
        so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization]
        so.enable_cpu_mem_arena = self.memory_arena if options.memory_arena is None else options.memory_arena
        so.log_severity_level = 3  # warnings from onnxruntime are noise for an app; errors surface as ours
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.enable_profiling = options.profile
        return so

    def create_session(self, model_path: str, options: BackendOptions, fingerprint: str | None = None) -> ort.InferenceSession:
        """A session for MODEL_PATH. FINGERPRINT (the graph files' sha256) lets a backend that compiles graphs
        keep the compiled form between loads; others ignore it."""
        self.require()
        try:
            return ort.InferenceSession(
                model_path, sess_options=self.session_options(options), providers=self.providers(options)
            )
        except (InvalidProtobuf, InvalidGraph, InvalidArgument, NoSuchFile) as exc:  # the file, not the device
            raise PackageError(f"{model_path} is not a valid model ({last_line(exc)}): the package is damaged, re-export it") from None
        except Exception as exc:  # onnxruntime raises its own exception types; give one line instead
            raise BackendError(f"{self.name}: cannot create a session for {model_path}: {last_line(exc)}") from None

    def require(self) -> None:
        status = self.availability()
        if not status.ok:
            raise BackendError(f"backend {self.name} is not available: {status}")


def open_whole(backend: str, model_path: str, open_session: Callable[[], ort.InferenceSession],
               rejected_ops: Callable[[], str], device: str, fix: str) -> ort.InferenceSession:
    """OPEN_SESSION() for a device that must take every node (fallback off): a damaged file is a PackageError; nodes
    DEVICE refuses, one BackendError naming them (REJECTED_OPS(): a diagnostic session with fallback on) and FIX."""
    try:
        return open_session()
    except (InvalidProtobuf, InvalidGraph, NoSuchFile) as exc:  # the file, not the device
        raise PackageError(f"{model_path} is not a valid model ({last_line(exc)}): the package is damaged, re-export it") from None
    except Exception as exc:
        message = last_line(exc)
        if "fallback" in message.lower() or "CPU EP" in message:
            rejected = rejected_ops()
            raise BackendError(f"{backend}: {Path(model_path).name} has nodes {device} does not take "
                               f"({rejected or 'see the onnxruntime log'}): {fix}") from None
        raise BackendError(f"{backend}: cannot create a session for {model_path}: {message}") from None


def cpu_model(system: str | None = None) -> str:
    """The CPU's marketing name on SYSTEM (this one by default): bench rows from many machines must tell them apart."""
    system = system or platform.system()
    try:
        if system == "Linux":
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    # x86 says "model name"; some ARM kernels say "Processor" or only "Hardware".
                    if line.split(":")[0].strip() in ("model name", "Processor", "Hardware"):
                        return line.split(":", 1)[1].strip()
        elif system == "Windows":  # e.g. "Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU"
            import winreg

            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0") as key:
                return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
        elif system == "Darwin":
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
    except (OSError, ImportError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()
