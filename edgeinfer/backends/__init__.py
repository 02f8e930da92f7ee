"""Backends by name. Adding one (DirectML, CoreML, WebGPU) is one module and one line here.

A name may pick one of a backend's devices after a colon (`openvino:npu`); the backend lists them in `variants`."""

from __future__ import annotations

from ..errors import BackendError
from .base import Availability, Backend, BackendOptions
from .cpu import CPUBackend
from .cuda import CUDABackend
from .openvino import OpenVINOBackend
from .qnn import QNNBackend

_REGISTRY: dict[str, type[Backend]] = {cls.name: cls for cls in (CPUBackend, CUDABackend, QNNBackend, OpenVINOBackend)}


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    base, colon, variant = name.partition(":")
    if base not in _REGISTRY:
        raise BackendError(f"unknown device {name!r}: choose one of {', '.join(_REGISTRY)}")
    cls = _REGISTRY[base]
    if not colon:
        return cls()
    if variant not in cls.variants:
        choices = ", ".join(f"{base}:{v}" for v in cls.variants)
        raise BackendError(f"unknown {base} device {variant!r}: choose one of {choices}" if choices
                           else f"device {base} has no sub-devices: pass --device {base}")
    return cls(variant)


__all__ = ["Availability", "Backend", "BackendOptions", "backend_names", "get_backend"]
