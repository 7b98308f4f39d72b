"""The training resume checkpoint: written atomically, read back without running any pickle code.

It holds only tensors, str/int/float/bool/None and lists, tuples and dicts of them (``plain_state``
checks this when writing), which is exactly what ``torch.load(weights_only=True)`` rebuilds: the
trainable weights, the optimizer's and scheduler's state dicts, the torch, Python and NumPy RNG
states (NumPy's key array as a list) and the history. A file that needs anything more, e.g. a
planted pickle whose ``__reduce__`` would run a command, is refused by the loader and training
restarts from scratch, which ends in the same weights.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lm_eval_approx.cache.atomic import write_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
# Exact types: subclasses such as numpy.float64 (a float) would be pickled as foreign globals.
PLAIN_SCALARS = (str, int, float, bool)


def plain_state(value: Any, where: str = "checkpoint") -> Any:
    """``value`` checked to be tensors, plain scalars and containers of them; anything else raises
    TypeError when the checkpoint is written, not when a run tries to resume from it."""
    if value is None or type(value) in PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return value
    if type(value) in (list, tuple):
        return type(value)(plain_state(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        for key in value:
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; checkpoints take str/int keys")
        return {k: plain_state(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where} holds a {type(value).__name__}; checkpoints hold only tensors and plain values")


def rng_state() -> dict[str, Any]:
    """The torch, Python and NumPy RNG states in plain form."""
    name, keys, *rest = np.random.get_state()
    numpy_state = (name, keys.tolist(),  # type: ignore[attr-defined]  # numpy's stub: the dict, not the default tuple
                   *(r.item() if isinstance(r, np.generic) else r for r in rest))
    return {"rng": torch.get_rng_state(), "rng_python": random.getstate(), "rng_numpy": numpy_state}


def restore_rng(saved: dict[str, Any]) -> None:
    """Put back the RNG states of ``rng_state`` (checkpoints of older versions hold only torch's)."""
    torch.set_rng_state(saved["rng"])
    if "rng_python" in saved:
        version, internal, gauss = saved["rng_python"]
        random.setstate((version, tuple(internal), gauss))
    if "rng_numpy" in saved:
        name, keys, *rest = saved["rng_numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def write_checkpoint(path: Path, trainable: dict[str, torch.Tensor], optimizer, scheduler, history: dict,
                     best_state: dict[str, torch.Tensor] | None) -> None:
    """Everything a resumed run needs, written atomically (temporary file, fsync, rename)."""
    state = plain_state({"trainable": trainable, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), **rng_state(), "history": history,
                         "best_state": best_state})
    write_atomic(path, lambda fh: torch.save(state, fh))


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` read with ``weights_only=True``, or None when there is none or it
    cannot be read that way (foreign, corrupt or carrying code): the run then restarts from scratch."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("ignoring unreadable checkpoint %s (%s); training restarts", path, reason)
        return None
    if not isinstance(saved, dict) or "history" not in saved:
        logger.warning("ignoring checkpoint %s of an unknown layout; training restarts", path)
        return None
    return saved
