"""GPU inventory: NVML when the driver is there, else what the configuration lists.

A job gets GPUs by index (CUDA_VISIBLE_DEVICES, the NVML/CUDA ordering) and its
scope may open only their device nodes (/dev/nvidia<minor>) plus the driver's
shared control nodes; every other device stays closed (DevicePolicy=closed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Shared nodes every CUDA process opens besides its GPUs' own; harmless without the others.
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")


@dataclass(frozen=True)
class Gpu:
    index: int
    minor: int
    name: str = ""
    uuid: str = ""


def discover() -> list[Gpu]:
    """The GPUs NVML sees, or [] where nvidia-ml-py or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.debug("NVML unavailable: %s", e)
        return []
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            found.append(Gpu(i, pynvml.nvmlDeviceGetMinorNumber(h),
                             name.decode() if isinstance(name, bytes) else name,
                             uuid.decode() if isinstance(uuid, bytes) else uuid))
        return found
    except pynvml.NVMLError as e:
        log.warning("NVML: cannot list GPUs: %s", e)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def device_paths(pattern: str, indices: list[int], minors: dict[int, int]) -> list[str]:
    return [pattern.format(index=i, minor=minors.get(i, i)) for i in indices]
