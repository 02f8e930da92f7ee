"""Backends by name. Adding one (OpenVINO, DirectML, CoreML, WebGPU) is one module and one line here."""

from __future__ import annotations

from ..errors import BackendError
from .base import Availability, Backend, BackendOptions
from .cpu import CPUBackend
from .cuda import CUDABackend
from .qnn import QNNBackend

_REGISTRY: dict[str, type[Backend]] = {cls.name: cls for cls in (CPUBackend, CUDABackend, QNNBackend)}


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise BackendError(f"unknown device {name!r}: choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


__all__ = ["Availability", "Backend", "BackendOptions", "backend_names", "get_backend"]
