"""OpenVINO: Intel's runtime for its CPUs, GPUs and NPUs through onnxruntime-ep-openvino's plugin execution provider.

Like onnxruntime-qnn 2.x the plugin (OpenVINO bundled) is registered with onnxruntime at run time and offers one "EP
device" per OpenVINO device, named by its `ov_device` metadata (CPU, GPU, NPU; AUTO as `ov_meta_device`). `--device
openvino:npu|gpu|cpu|auto` picks one; plain `--device openvino` the first offered of NPU, GPU, CPU.

It runs the static graphs of `edgeinfer export --target openvino` (export/static_graph.py with WeightBlocks): fixed
shapes (what its NPU compiles), standard-op attention, MatMulNBits weights, float activations. The cpu package's
GroupQueryAttention never runs on OpenVINO (the graph splits around it), and the qnn package's 16-bit QDQ graphs part
from the CPU EP (README, OpenVINO). CPU fallback is off unless allow_fallback; every session records which EP took
each node (last_assignment).

Compiled graphs go to OpenVINO's own model cache (its CACHE_DIR property, through the plugin's load_config) in a folder per package file and device
under $EDGEINFER_CACHE/openvino/, with a stamp like the QNN context cache: a blob whose stamp (package, onnxruntime,
plugin, device, options) or sha256 no longer matches is removed before OpenVINO may load it, and compiled again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path

import onnxruntime as ort

from ..cache_dir import cache_root, private_folder
from ..errors import BackendError
from ..package import sha256_of
from .base import Availability, Backend, BackendOptions, open_whole

EP_NAME = "OpenVINOExecutionProvider"
DEVICES = ("npu", "gpu", "cpu", "auto")  # `openvino:<device>`; plain `openvino` takes the first offered of the three
_registered = threading.Lock()
# _CPU_PRECISION: OpenVINO's CPU plugin computes in bf16 where the CPU has it (this Xeon's AVX-512 BF16 does): one
# MatMulNBits of a probe then parts from exact by 0.3% of its output, in f32 by 1e-6. The CPU device asks for f32;
# GPU and NPU keep OpenVINO's default (f16).


def openvino_ep_devices() -> list:
    """Register the plugin once per process and return its EP devices (empty when not installed)."""
    try:
        import onnxruntime_ep_openvino
    except ImportError:
        return []
    with _registered:
        if not any(d.ep_name.startswith(EP_NAME) for d in ort.get_ep_devices()):
            try:
                ort.register_execution_provider_library(EP_NAME, onnxruntime_ep_openvino.get_library_path())
            except Exception:  # an incompatible onnxruntime refuses the library
                return []
    return [d for d in ort.get_ep_devices() if d.ep_name.startswith(EP_NAME)]


def offered_devices(ep_devices: list) -> dict:
    """The EP devices by our name for them (npu, gpu, cpu, auto), from their ov_device / ov_meta_device metadata;
    the first of each kind (GPU.0 before GPU.1)."""
    found = {}
    for device in ep_devices:
        meta = device.ep_metadata
        kind = (meta.get("ov_meta_device") or meta.get("ov_device", "")).split(".")[0].lower()
        found.setdefault(kind, device)
    return found


def plugin_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxruntime-ep-openvino")
    except Exception:
        return ""


def node_assignment(session: ort.InferenceSession) -> dict:
    """How many nodes OpenVINO took (needs session.record_ep_graph_assignment_info=1) and the op types it left."""
    counts, elsewhere = Counter(), Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        on_openvino = subgraph.ep_name.startswith(EP_NAME)
        counts[on_openvino] += len(nodes)
        if not on_openvino:
            elsewhere.update(node.op_type for node in nodes)
    total = counts[True] + counts[False]
    return {"openvino_nodes": counts[True], "total_nodes": total, "openvino_share": counts[True] / total if total else 0.0,
            "cpu_ops": dict(elsewhere)}


class OpenVINOBackend(Backend):
    name = "openvino"
    target = "openvino"
    variants = DEVICES
    kv_location = "host"

    def __init__(self, device: str | None = None):
        self.requested = device  # None: the first offered of npu, gpu, cpu
        self.last_assignment: dict = {}

    # -- which device --------------------------------------------------------------------------------------
    def device(self) -> str:
        """The OpenVINO device sessions run on (npu, gpu, cpu, auto)."""
        if self.requested:
            return self.requested
        offered = offered_devices(openvino_ep_devices())
        return next((d for d in ("npu", "gpu", "cpu") if d in offered), "cpu")

    def ep_device(self):
        return offered_devices(openvino_ep_devices()).get(self.device())

    def availability(self) -> Availability:
        try:
            import onnxruntime_ep_openvino  # noqa: F401
        except ImportError:
            return Availability(False, "onnxruntime-ep-openvino is not installed", "pip install 'edgeinfer[openvino]'")
        if not hasattr(ort, "register_execution_provider_library"):
            return Availability(False, f"onnxruntime {ort.__version__} cannot load plugin EPs", "pip install 'onnxruntime>=1.24'")
        offered = offered_devices(openvino_ep_devices())
        if not offered:
            return Availability(False, "the OpenVINO plugin EP did not register with onnxruntime",
                                "reinstall onnxruntime-ep-openvino matching onnxruntime")
        if self.device() not in offered:
            fix = {"npu": "an Intel Core Ultra NPU needs its driver (intel-npu-driver on Linux, Intel's NPU driver on Windows)",
                   "gpu": "an Intel GPU needs its compute runtime (intel-opencl-icd / Level Zero on Linux, the graphics driver on Windows)"}
            return Availability(False, f"OpenVINO offers no {self.device().upper()} here (it offers {', '.join(sorted(offered))})",
                                fix.get(self.device(), "pick another openvino device"))
        return Availability(True)

    def device_description(self) -> str:
        device = self.ep_device()
        if device is None:
            return f"OpenVINO {self.device().upper()}"
        meta = device.ep_metadata
        return f"OpenVINO {self.device().upper()}: {meta.get('FULL_DEVICE_NAME', '')} ({meta.get('EXECUTION_DEVICES', '')})"

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "onnxruntime-ep-openvino": plugin_version()}

    def reads_bound_inputs_in_place(self) -> bool:
        # Seen with onnxruntime-ep-openvino 1.8.1 on its CPU device: a static runner's inputs bound once and written
        # before each run reached OpenVINO as they were when bound (uninitialized: NaN logits); fed per run they match
        # the CPU EP to 1e-6.
        return False

    # -- sessions ------------------------------------------------------------------------------------------
    def provider_options(self, options: BackendOptions, cache_dir: Path | None = None) -> dict[str, str]:
        """The plugin's options: OpenVINO properties go in load_config ({"CPU": {...}}; the plugin ignores its older
        `precision` and `cache_dir` options and says so). A user's own load_config entries win over ours."""
        device = self.device().upper()
        properties = {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}  # see _CPU_PRECISION
        if cache_dir is not None:
            properties["CACHE_DIR"] = str(cache_dir)
        provider = {k: v for k, v in options.provider_options.items() if k != "load_config"}
        if options.threads:
            provider.setdefault("num_of_threads", str(options.threads))
        try:
            config = json.loads(options.provider_options.get("load_config", "{}"))
            config[device] = {**properties, **config.get(device, {})}
        except (ValueError, TypeError, AttributeError):
            raise BackendError("openvino: provider option load_config is not a JSON object of device properties: "
                               'pass e.g. {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}') from None
        if config[device]:
            provider["load_config"] = json.dumps(config, sort_keys=True)
        return provider

    def providers(self, options: BackendOptions) -> list:
        return []  # added per device in session_options, as plugin EPs require

    def session_options(self, options: BackendOptions, cache_dir: Path | None = None):
        so = super().session_options(options)
        so.add_provider_for_devices([self.ep_device()], self.provider_options(options, cache_dir))
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if options.allow_fallback else "1")
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        return so

    def create_session(self, model_path: str, options: BackendOptions, fingerprint: str | None = None) -> ort.InferenceSession:
        """A session on the OpenVINO device. With FINGERPRINT (the graph files' sha256) the compiled blob is kept in
        OpenVINO's cache_dir while its stamp matches (BlobCache); otherwise OpenVINO compiles again."""
        self.require()
        if fingerprint is None:
            return self._open(model_path, options, None)
        cache = BlobCache(Path(model_path), self.cache_stamp(fingerprint, options))
        if not cache.is_current():
            cache.clear()
        session = self._open(model_path, options, cache.folder)
        if not cache.is_current():
            cache.write_stamp()
        return session

    def cache_stamp(self, fingerprint: str, options: BackendOptions) -> dict:
        device = self.ep_device()
        return {"package": fingerprint, "onnxruntime": ort.__version__, "onnxruntime_ep_openvino": plugin_version(),
                "device": self.device(), "device_name": device.ep_metadata.get("FULL_DEVICE_NAME", "") if device else "",
                "provider_options": dict(sorted(self.provider_options(options).items())),
                "allow_fallback": options.allow_fallback}

    def _open(self, model_path: str, options: BackendOptions, cache_dir: Path | None) -> ort.InferenceSession:
        session = open_whole(
            "openvino", model_path,
            lambda: ort.InferenceSession(model_path, sess_options=self.session_options(options, cache_dir)),
            lambda: self.rejected_ops(model_path, options), f"OpenVINO {self.device().upper()}",
            "export with --target openvino, or pass allow_fallback / --allow-fallback to run them on the CPU EP",
        )
        self.last_assignment = node_assignment(session)
        return session

    def rejected_ops(self, model_path: str, options: BackendOptions) -> str:
        """Which op types land on the CPU EP when fallback is allowed (a second, diagnostic session)."""
        try:
            allowed = BackendOptions(**{**options.__dict__, "allow_fallback": True})
            cpu = node_assignment(ort.InferenceSession(model_path, sess_options=self.session_options(allowed)))["cpu_ops"]
        except Exception:
            return ""
        return ", ".join(f"{op} x{n}" for op, n in sorted(cpu.items()))


class BlobCache:
    """OpenVINO's cache_dir for one package file on one device: $EDGEINFER_CACHE/openvino/<key>/ holding OpenVINO's
    blobs and stamp.json (the stamp and every blob's sha256), as the QNN ContextCache does. OpenVINO keys its blobs
    by the model and its settings but trusts whatever file sits under that name; the stamp makes a changed,
    truncated or foreign blob (or one from another onnxruntime / plugin build) a recompile instead. Folders 0700,
    files 0600."""

    STAMP = "stamp.json"

    def __init__(self, source: Path, stamp: dict):
        self.stamp = stamp
        key = hashlib.sha256(f"{stamp['package']}|{source.name}|{stamp['device']}".encode()).hexdigest()[:24]
        self.folder = private_folder(private_folder(cache_root() / "openvino") / key)
        self.stamp_file = self.folder / self.STAMP

    def blobs(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and p.name != self.STAMP)

    def is_current(self) -> bool:
        try:
            recorded = json.loads(self.stamp_file.read_text(encoding="utf-8"))
            blobs = self.blobs()
            return (recorded.get("stamp") == self.stamp and bool(blobs) and not any(p.is_symlink() for p in blobs)
                    and recorded.get("sha256") == {str(p.relative_to(self.folder)): sha256_of(p) for p in blobs})
        except (OSError, ValueError, AttributeError):
            return False

    def clear(self) -> None:
        for path in sorted(self.folder.rglob("*"), reverse=True):  # files before the folders that hold them
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)

    def write_stamp(self) -> None:
        # Written after the compile: a compile that died halfway leaves no stamp, so the next load compiles again.
        hashes = {}
        for path in self.blobs():
            os.chmod(path, 0o600)
            hashes[str(path.relative_to(self.folder))] = sha256_of(path)
        fd = os.open(self.stamp_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"stamp": self.stamp, "sha256": hashes}, f, indent=2)
