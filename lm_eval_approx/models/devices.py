"""Where the pipeline's models run and in which dtype: the accepted names, checked once here.

A device is ``cpu``, ``cuda`` (the current GPU: under a pinned worker, the one it was given) or
``cuda:N``. The form is checked wherever a config is read (``check_device``), so a typo fails in a
second; whether this machine has that GPU is checked where models will run (``check_device_available``),
not where a config is only read: a Ray or SLURM driver without a GPU still plans and submits cells for
GPU workers, and ``--dry-run`` costs a cuda grid on a laptop.

The extraction dtype is the dtype the models are loaded in while labelling, scoring losses, sampling
and embedding. Every reduction over tokens runs in float32 whatever it is (each stage upcasts
its logits or hidden states first), and results come back as float32 numpy arrays. The dtype changes
the numbers a stage computes, so the stages that run a model record it (``EXTRACT_DTYPE_KEY``); keys
leave it out at float32 (``cache/keys.py``), so keys made before it existed stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lm_eval_approx.errors import ConfigError

CPU, CUDA = "cpu", "cuda"
DEFAULT_DTYPE = "float32"
DTYPES = (DEFAULT_DTYPE, "bfloat16", "float16")
DEVICES_ACCEPTED = "cpu, cuda or cuda:N (N: a GPU index)"
_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")
EXTRACT_DTYPE_KEY = "extract_dtype"


class DeviceError(ConfigError):
    """A device that is not one of the accepted names, or a GPU this machine does not have."""


def check_device(field: str, device: object, error: Callable[[str, object, str], Exception] = DeviceError) -> str:
    """``device`` when it is cpu, cuda or cuda:N (``cpu:1`` is refused: there is one CPU device);
    ``error(field, device, accepted)`` is raised otherwise."""
    if not isinstance(device, str) or not _DEVICE.match(device) or device.startswith(f"{CPU}:"):
        raise error(field, device, DEVICES_ACCEPTED)
    return device


def check_dtype(field: str, dtype: object) -> str:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(field, dtype, " | ".join(DTYPES))
    return dtype


def check_device_available(field: str, device: object) -> str:
    """``device`` when this machine can run models on it; a ``DeviceError`` saying what torch sees
    otherwise (no CUDA at all, or fewer GPUs than the index)."""
    device = check_device(field, device)
    if not device.startswith(CUDA):
        return device
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(field, device, f"{CPU} here: torch {torch.__version__} sees no CUDA device on this machine "
                          f"(its CUDA build: {torch.version.cuda or 'none, a CPU-only build'})")
    count = torch.cuda.device_count()
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise DeviceError(field, device, f"{CPU}, {CUDA} or cuda:0..cuda:{count - 1} ({count} GPU(s) visible here)")
    return device
