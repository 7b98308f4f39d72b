"""How fast this CPU is against the machine the estimate's rates were measured on.

The CPU rates of ``estimate.py`` come from one 2-core machine; another 2-core machine took up to
twice as long for every stage (docs/getting-started.md, "Timings from a fresh clone"). Rather than quote the
reference machine's minutes, the up-front line times a fixed workload here and scales by the
ratio: the float32 matrix products of SmolLM2-135M's 30 decoder layers (hidden 576, MLP 1,536,
grouped K/V 192) on ``PROBE_ROWS`` token rows, at the thread count torch uses, best of
``PROBE_REPEATS`` (a busy machine shows up as slower, which is also what the run will see: two
torch threads beside another busy process run several times slower than one). The probe takes
under a second on a quiet machine, once per process.

The ratio is a rough guide: it times matrix products only, and a run's stages also tokenise,
load models and write files.
"""

from __future__ import annotations

import time
from functools import lru_cache

PROBE_LAYERS = 30
PROBE_ROWS = 128
PROBE_REPEATS = 3
HIDDEN, MLP, KV = 576, 1536, 192
# The probe time of a machine whose speed the CPU rates describe, calibrated so that the scaled
# estimate equals a measured run: `make demo` from a fresh clone, every cache empty, quiet, two
# torch threads (2026-12-02): probe 0.099 s, 8 min 15 s wall, 15.6 min at the reference rates.
REFERENCE_PROBE_SECONDS = 0.187


def _workload():
    import torch

    generator = torch.Generator().manual_seed(0)
    shapes = [(HIDDEN, HIDDEN + 2 * KV), (HIDDEN, HIDDEN), (HIDDEN, 2 * MLP), (MLP, HIDDEN)]
    weights = [torch.randn(*shape, generator=generator) * 0.02 for shape in shapes]
    x = torch.randn(PROBE_ROWS, HIDDEN, generator=generator)

    def run() -> None:
        with torch.no_grad():
            h = x
            for _ in range(PROBE_LAYERS):
                qkv, attn, gate_up, down = weights
                h = h + (h @ qkv)[:, :HIDDEN] @ attn
                h = h + (h @ gate_up)[:, :MLP] @ down
    return run


@lru_cache(maxsize=1)
def probe_seconds() -> float:
    """Best-of-``PROBE_REPEATS`` wall seconds of the probe workload on this machine."""
    run = _workload()
    run()  # warm-up: thread pool start, first-touch of the weights
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def slowdown() -> float:
    """This machine's probe time over the reference machine's (2.0: stages will take about twice
    the estimate's reference minutes)."""
    return probe_seconds() / REFERENCE_PROBE_SECONDS
