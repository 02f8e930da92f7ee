"""QNN: Qualcomm's AI Engine Direct through onnxruntime-qnn's plugin execution provider (HTP = the Hexagon NPU).

onnxruntime-qnn 2.x is a plugin: it is registered with onnxruntime at run time and then offered as an
"EP device"; it does not appear in onnxruntime.get_available_providers(). On x86-64 its HTP backend is a
simulator with the same graph compiler and numerics as the device.
"""

from __future__ import annotations

import platform
import threading

import onnxruntime as ort

from ..errors import BackendError
from .base import Availability, Backend, BackendOptions, _first_line

EP_NAME = "QNNExecutionProvider"
_registered = threading.Lock()
_DEFAULT_OPTIONS = {"backend_type": "htp", "htp_performance_mode": "burst", "htp_graph_finalization_optimization_mode": "3"}


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


def qnn_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxruntime-qnn")
    except Exception:
        return ""


class QNNBackend(Backend):
    name = "qnn"
    target = "qnn"
    graph_flavour = "static"
    kv_location = "host"

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

    def providers(self, options: BackendOptions) -> list:
        return []  # added per device in session_options, as plugin EPs require

    def session_options(self, options: BackendOptions):
        so = super().session_options(options)
        so.add_provider_for_devices(qnn_ep_devices(), self.provider_options(options))
        # Fail loudly instead of silently running unsupported nodes on the CPU.
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if options.allow_fallback else "1")
        return so

    def create_session(self, model_path: str, options: BackendOptions) -> ort.InferenceSession:
        self.require()
        try:
            return ort.InferenceSession(model_path, sess_options=self.session_options(options))
        except Exception as exc:
            message = _first_line(exc)
            hint = " (pass allow_fallback / --allow-fallback to run those nodes on the CPU)" if "CPU EP" in message else ""
            raise BackendError(f"qnn: cannot create a session for {model_path}: {message}{hint}") from None
