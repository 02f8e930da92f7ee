"""QNN: Qualcomm's AI Engine Direct through onnxruntime-qnn's plugin execution provider (HTP = the Hexagon NPU).

onnxruntime-qnn 2.x is a plugin: it is registered with onnxruntime at run time and then offered as an
"EP device"; it does not appear in onnxruntime.get_available_providers(). On x86-64 its HTP backend is a
simulator with the same graph compiler and numerics as the device.

HTP settings go through BackendOptions.provider_options as QNN names them: backend_type, htp_performance_mode,
soc_model / htp_arch, enable_htp_fp16_precision, profiling_level. CPU fallback is disabled unless allow_fallback;
a refused graph names the op types QNN did not take. The first load compiles each graph and writes an EP
context (X_ctx.onnx + X_ctx_qnn.bin) with a JSON stamp; later loads skip compilation while the stamp matches.

Sessions ask for the HTP shared-memory allocator (rpcmem, through FastRPC's libcdsprpc): buffers a runner allocates
there are read and written by the NPU in place, where plain host buffers are copied in and out every run. Where the
EP refuses it (no libcdsprpc: the x86-64 simulator) sessions open without it and runners bind plain host memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf, NoSuchFile

from ..errors import BackendError, PackageError, last_line
from ..cache_dir import cache_root, private_folder
from ..package import sha256_of
from .base import Availability, Backend, BackendOptions, open_whole

EP_NAME = "QNNExecutionProvider"
_registered = threading.Lock()
# Asked by default (see the module docstring): a user's "0" never asks, a user's "1" makes a refusal an error.
SHARED_MEMORY = "enable_htp_shared_memory_allocator"
# enable_block_quant_weight_optimization: block-quantized int4 weights (export/int4_blocks.py) become LPBQ, which the
# HTP runs with 16-bit integer activations; without it QNN wants fp16 activations for them and a SoC that has fp16.
_DEFAULT_OPTIONS = {"backend_type": "htp", "htp_performance_mode": "burst", "htp_graph_finalization_optimization_mode": "3",
                    "enable_block_quant_weight_optimization": "1", SHARED_MEMORY: "1"}
# A float graph does not fit the HTP's fp32 path (the simulator fails with QNN_COMMON_ERROR_MEM_ALLOC); in fp16 it runs,
# and QNN wants a SoC model with fp16. 60 is the Snapdragon X Elite that Qualcomm's own recipes target.
_FLOAT_OPTIONS = {"enable_htp_fp16_precision": "1", "soc_model": "60"}


def qnn_ep_devices() -> list:
    """Register the plugin once per process and return its EP devices (empty when not installed)."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return []
    with _registered:
        if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
            try:
                ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
            except Exception:  # an incompatible onnxruntime refuses the library
                return []
    return [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]


@contextmanager
def native_stdout_to_stderr():
    """QNN's libraries print to the process's stdout when they load (`# LIBNATIVE: ...`). Point file descriptor 1
    at stderr meanwhile, so stdout carries only what the command promises (`edgeinfer run --json | ...`)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def htp_library_name(system: str | None = None) -> str:
    """The HTP backend library's file name on SYSTEM (this one by default): QnnHtp.dll on Windows on Snapdragon."""
    return "QnnHtp.dll" if (system or platform.system()) == "Windows" else "libQnnHtp.so"


def qnn_build_id() -> str:
    """The HTP library's exact build (e.g. v2.51.0.260929181845, what EPContext nodes record as ep_sdk_version)."""
    import ctypes

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("patch", ctypes.c_uint32)]

    class Interface(ctypes.Structure):  # the head of QnnInterface_t, up to backendGetBuildId
        _fields_ = [("backend_id", ctypes.c_uint32), ("provider_name", ctypes.c_char_p), ("core_api", Version),
                    ("backend_api", Version), ("has_capability", ctypes.c_void_p), ("create", ctypes.c_void_p),
                    ("set_config", ctypes.c_void_p), ("get_api_version", ctypes.c_void_p), ("get_build_id", ctypes.c_void_p)]

    try:
        import onnxruntime_qnn

        with native_stdout_to_stderr():
            lib = ctypes.CDLL(str(Path(onnxruntime_qnn.get_library_path()).parent / htp_library_name()))
        providers, count = ctypes.POINTER(ctypes.POINTER(Interface))(), ctypes.c_uint32()
        if lib.QnnInterface_getProviders(ctypes.byref(providers), ctypes.byref(count)) or not count.value:
            return ""
        get_build_id = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.POINTER(ctypes.c_char_p))(providers[0].contents.get_build_id)
        build = ctypes.c_char_p()
        return build.value.decode() if get_build_id(ctypes.byref(build)) == 0 and build.value else ""
    except Exception:  # another platform's library name, or a layout change: the package versions still key the cache
        return ""


def qnn_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxruntime-qnn")
    except Exception:
        return ""


class QNNBackend(Backend):
    name = "qnn"
    target = "qnn"
    kv_location = "host"

    def __init__(self):
        self.shared_memory_taken = False  # the last session opened with SHARED_MEMORY on
        # The EP's error when it refused SHARED_MEMORY (asked by default): later sessions open without it.
        # Seen on x86-64 with onnxruntime-qnn 2.7.0 (the simulator): a session that compiles (ep.context_enable=1)
        # opens with it, yet the EP device then publishes no HOST_ACCESSIBLE memory; a session from the compiled
        # context is refused, EP creation looking for FastRPC's libcdsprpc.so and finding none ("Unknown exception
        # occurred while creating QNN EP"). Either way runners bind plain host memory there.
        self.shared_memory_refusal = ""

    def availability(self) -> Availability:
        try:
            import onnxruntime_qnn  # noqa: F401
        except ImportError:
            return Availability(False, "onnxruntime-qnn is not installed", "pip install 'edgeinfer[qnn]'")
        if not hasattr(ort, "register_execution_provider_library"):
            return Availability(False, f"onnxruntime {ort.__version__} cannot load plugin EPs", "pip install 'onnxruntime>=1.24'")
        if not qnn_ep_devices():
            return Availability(False, "the QNN plugin EP did not register with onnxruntime", "reinstall onnxruntime-qnn matching onnxruntime")
        return Availability(True)

    def device_description(self) -> str:
        if platform.machine() in ("x86_64", "AMD64"):
            return "Qualcomm HTP simulator on x86-64"
        return f"Qualcomm Hexagon NPU ({platform.machine()})"

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "onnxruntime-qnn": qnn_version()}

    def provider_options(self, options: BackendOptions) -> dict[str, str]:
        return {**_DEFAULT_OPTIONS, **options.provider_options}

    def package_options(self, precision: str, options: BackendOptions) -> BackendOptions:
        """Options a package's precision needs (fp32 packages run in fp16 on the HTP); the user's win."""
        if precision != "fp32":
            return options
        return replace(options, provider_options={**_FLOAT_OPTIONS, **options.provider_options})

    def providers(self, options: BackendOptions) -> list:
        return []  # added per device in session_options, as plugin EPs require

    def shared_memory(self) -> ort.OrtMemoryInfo | None:
        """The HTP's shared memory once a session took SHARED_MEMORY and the EP publishes it on its device (as
        HOST_ACCESSIBLE memory that onnxruntime can allocate); None otherwise. Untried on a device: the simulator
        never offers it (see __init__), and the EP's source adds that memory to its device only when it creates an
        EP, after onnxruntime made its environment's allocators; hence the trial allocation."""
        if not self.shared_memory_taken:
            return None
        found = [d.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE) for d in qnn_ep_devices()]
        info = next((i for i in found if i is not None), None)
        if info is None:
            return None
        try:
            ort.OrtValue.ortvalue_from_shape_and_type([1], "uint16", memory_info=info)  # an allocator exists
        except Exception:  # onnxruntime has no allocator for it outside the session
            return None
        return info

    def session_provider_options(self, options: BackendOptions) -> dict[str, str]:
        """provider_options less SHARED_MEMORY once the EP refused it (unless the user asked for it)."""
        provider = self.provider_options(options)
        if self.shared_memory_refusal and SHARED_MEMORY not in options.provider_options:
            provider[SHARED_MEMORY] = "0"
        return provider

    def session_options(self, options: BackendOptions):
        so = super().session_options(options)
        so.add_provider_for_devices(qnn_ep_devices(), self.session_provider_options(options))
        # Fail loudly instead of silently running unsupported nodes on the CPU.
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if options.allow_fallback else "1")
        return so

    def create_session(self, model_path: str, options: BackendOptions, fingerprint: str | None = None) -> ort.InferenceSession:
        """A session on QNN. With FINGERPRINT (the package files' sha256), the compiled graph is cached as an EP
        context (X_ctx.onnx + its .bin) and reused while the stamp (package, onnxruntime/QNN builds, provider
        options) still matches; otherwise it is compiled again and the cache rewritten."""
        self.require()
        if fingerprint is None:
            return self._open(model_path, options)
        cache = ContextCache(Path(model_path), self.cache_stamp(fingerprint, options))
        if cache.is_current():
            try:
                return self._open(str(cache.model), options)
            except (BackendError, PackageError):
                pass  # unreadable or refused by this QNN build: compile again below
        cache.clear()
        session = self._open(model_path, options, context_file=cache.model)
        cache.write_stamp()
        return session

    def cache_stamp(self, fingerprint: str, options: BackendOptions) -> dict:
        return {
            "package": fingerprint, "onnxruntime": ort.__version__, "onnxruntime_qnn": qnn_version(),
            "qnn_build": qnn_build_id(), "provider_options": dict(sorted(self.provider_options(options).items())),
            "allow_fallback": options.allow_fallback,
        }

    def _open(self, model_path: str, options: BackendOptions, context_file: Path | None = None) -> ort.InferenceSession:
        session = open_whole(
            "qnn", model_path, lambda: self._negotiated(model_path, options, context_file),
            lambda: self.rejected_ops(model_path, options), "QNN",
            "re-export the package, or pass allow_fallback / --allow-fallback to run them on the CPU",
        )
        if options.allow_fallback:
            self.last_assignment = node_assignment(session)
            print(f"qnn: {Path(model_path).name}: {describe_assignment(self.last_assignment)}", file=sys.stderr)
        return session

    def _negotiated(self, model_path: str, options: BackendOptions, context_file: Path | None) -> ort.InferenceSession:
        """A session with SHARED_MEMORY where the EP takes it: asked by default, dropped for good once refused."""
        asked = not self.shared_memory_refusal and SHARED_MEMORY not in options.provider_options
        try:
            session = self._session(model_path, options, context_file)
        except (InvalidProtobuf, InvalidGraph, NoSuchFile):
            raise
        except Exception as exc:
            if not asked:
                raise
            self.shared_memory_refusal = last_line(exc)
            try:
                session = self._session(model_path, options, context_file)
            except Exception:
                self.shared_memory_refusal = ""  # not the reason: the error is the session's own
                raise
        self.shared_memory_taken = self.session_provider_options(options)[SHARED_MEMORY] == "1"
        return session

    def _session(self, model_path: str, options: BackendOptions, context_file: Path | None) -> ort.InferenceSession:
        so = self.session_options(options)
        if context_file is not None:
            # A refused attempt (say, nodes left for the CPU) can leave its EP context behind, and the EP will not
            # overwrite one: the next attempt would report "exists already" instead of the reason.
            for stale in (context_file, *context_file.parent.glob(f"{context_file.stem}*.bin")):
                stale.unlink(missing_ok=True)
            so.add_session_config_entry("ep.context_enable", "1")
            so.add_session_config_entry("ep.context_file_path", str(context_file))
            so.add_session_config_entry("ep.context_embed_mode", "0")  # the binary in its own .bin, not in the proto
        if options.allow_fallback:
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        with native_stdout_to_stderr():
            return ort.InferenceSession(model_path, sess_options=so)

    def rejected_ops(self, model_path: str, options: BackendOptions) -> str:
        """Which op types land on the CPU when fallback is allowed (a second, diagnostic session)."""
        try:
            so = self.session_options(BackendOptions(**{**options.__dict__, "allow_fallback": True}))
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            cpu = node_assignment(ort.InferenceSession(model_path, sess_options=so))["cpu_ops"]
        except Exception:
            return ""
        # With fallback allowed QNN leaves graph-boundary Q/DQ to the CPU on purpose: those are not rejections.
        real = {op: n for op, n in cpu.items() if op not in ("QuantizeLinear", "DequantizeLinear")} or cpu
        return ", ".join(f"{op} x{n}" for op, n in sorted(real.items()))


def node_assignment(session: ort.InferenceSession) -> dict:
    """How many nodes each EP took (needs session.record_ep_graph_assignment_info=1)."""
    counts, cpu = Counter(), Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        counts[subgraph.ep_name] += len(nodes)
        if subgraph.ep_name != EP_NAME:
            cpu.update(node.op_type for node in nodes)
    total = sum(counts.values())
    return {"qnn_nodes": counts[EP_NAME], "total_nodes": total, "qnn_share": counts[EP_NAME] / total if total else 0.0,
            "cpu_ops": dict(cpu)}


def describe_assignment(a: dict) -> str:
    line = f"{a['qnn_nodes']} of {a['total_nodes']} nodes on QNN ({a['qnn_share']:.0%})"
    if a["cpu_ops"]:
        line += "; on the CPU: " + ", ".join(f"{op} x{n}" for op, n in sorted(a["cpu_ops"].items()))
    return line


class ContextCache:
    """X.onnx -> X_ctx.onnx + X_ctx_qnn.bin + X_ctx.json (the stamp) under $EDGEINFER_CACHE/qnn/<key>/.

    Never beside the package: a package from a stranger could ship a compiled binary, and a stamp vouching for
    it, that would run instead of its verified graph. The stamp records the sha256 of every file the compile
    wrote, and every load hashes them again; a cache that does not match is compiled again. Folders 0700,
    files 0600.
    """

    def __init__(self, source: Path, stamp: dict):
        self.stamp = stamp
        key = hashlib.sha256(f"{stamp['package']}|{source.name}".encode()).hexdigest()[:24]
        folder = private_folder(cache_root() / "qnn") / key
        private_folder(folder)
        self.model = folder / f"{source.stem}_ctx.onnx"
        self.stamp_file = folder / f"{source.stem}_ctx.json"

    def written(self) -> list[Path]:
        """The files a compile wrote: the EP context model and its binaries."""
        return sorted([self.model, *self.model.parent.glob(f"{self.model.stem}*.bin")])

    def is_current(self) -> bool:
        try:
            recorded = json.loads(self.stamp_file.read_text(encoding="utf-8"))
            files = {path.name: path for path in self.written() if path.is_file() and not path.is_symlink()}
            return (recorded.get("stamp") == self.stamp and self.model.name in files
                    and recorded.get("sha256") == {name: sha256_of(path) for name, path in files.items()})
        except (OSError, ValueError, AttributeError):
            return False

    def clear(self) -> None:
        for path in [*self.written(), self.stamp_file]:
            path.unlink(missing_ok=True)

    def write_stamp(self) -> None:
        # Written last: a compile that died halfway leaves no stamp, so the next load compiles again.
        hashes = {}
        for path in self.written():
            os.chmod(path, 0o600)
            hashes[path.name] = sha256_of(path)
        fd = os.open(self.stamp_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"stamp": self.stamp, "sha256": hashes}, f, indent=2)
