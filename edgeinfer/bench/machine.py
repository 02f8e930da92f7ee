"""What machine a result came from: enough to tell rows apart when tables from many devices merge."""

from __future__ import annotations

import platform
import socket

import psutil

from ..backends.base import cpu_model


def describe_machine() -> dict:
    info = {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
    from ..backends.cuda import gpu_info

    gpu = gpu_info()
    if gpu:
        info["gpu"] = gpu
    return info
