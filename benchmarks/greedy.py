"""Greedy SELECT, ours vs the paper's reference loop, side by side on the same features.

Reference (the released code's loop): keep every row as s + g_i in float64; each pick renormalises
all rows, recomputes every cosine, takes the argmax, and adds the chosen g_j to every row.
Ours: ``lm_eval_approx.greedy.greedy_select`` (float16 rows, one Gram column per pick, exact).

Cases: dense d = 4096 features, and head features kept as factors (r = 3 label tokens,
d1 = d2 = 64, so d1·d2 = 4096). For each case: identical picks asserted at a small N; the
reference timed per pick over its first 20 picks at ``--ref-n`` rows and ours at the same N;
ours run in full at ``--n`` rows for ``--k`` picks (total seconds); peak working memory (numpy
allocations traced by tracemalloc, features themselves excluded). Prints
``<what> / <what>: 1.23x`` lines. Run: ``python benchmarks/greedy.py`` (about 5–8 minutes).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from lm_eval_approx.strategies.greedy import greedy_select
from lm_eval_approx.features.gradient_features import GradientFeatures

DIM = 4096
RANK, D1, D2 = 3, 64, 64
TIMED_PICKS = 20
CHECK_N, CHECK_K = 2000, 40
GEN_BLOCK = 8192
MIB = 2.0**20


def reference_select(matrix: np.ndarray, target: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The reference loop; returns picks and the wall time of each pick."""
    g = np.asarray(matrix, dtype=np.float64)
    rows = g.copy()
    t_hat = np.asarray(target, dtype=np.float64) / np.linalg.norm(target)
    taken = np.zeros(len(g), dtype=bool)
    picks, times = [], []
    for _ in range(k):
        start = time.perf_counter()
        normed = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        cos = normed @ t_hat
        cos[taken] = -np.inf
        j = int(np.argmax(cos))
        rows += g[j]
        taken[j] = True
        picks.append(j)
        times.append(time.perf_counter() - start)
    return picks, times


def dense_features(n: int, seed: int) -> GradientFeatures:
    rng = np.random.default_rng(seed)
    matrix = np.empty((n, DIM), dtype=np.float16)
    for lo in range(0, n, GEN_BLOCK):
        matrix[lo : lo + GEN_BLOCK] = rng.standard_normal((min(GEN_BLOCK, n - lo), DIM), dtype=np.float32)
    return GradientFeatures(matrix, rng.standard_normal(DIM).astype(np.float32))


def factored_features(n: int, seed: int, dense: bool) -> GradientFeatures:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, RANK, D1), dtype=np.float32)
    b = rng.standard_normal((n, RANK, D2), dtype=np.float32)
    target = rng.standard_normal(D1 * D2).astype(np.float32)
    if dense:  # the reference needs the N×d matrix; ours reads only the factors
        matrix = np.einsum("nrp,nrq->npq", a, b).reshape(n, -1)
    else:  # a zero-stride stand-in of the right shape: never read on the factored path
        matrix = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.float16), (n, D1 * D2), (0, 0))
    return GradientFeatures(matrix, target, factors=(a, b))


def ours_per_pick(feats: GradientFeatures) -> float:
    """Seconds per pick of ours over the first TIMED_PICKS picks (one-off setup excluded)."""
    return greedy_select(feats, TIMED_PICKS).pick_seconds / TIMED_PICKS


def traced(fn):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def run_case(label: str, make, args) -> None:
    small = make(CHECK_N, 1, True)
    ref_picks, _ = reference_select(small.matrix, small.target, CHECK_K)
    ours = greedy_select(small, CHECK_K).indices.tolist()
    if ours != ref_picks:
        raise SystemExit(f"{label}: picks differ from the reference at N={CHECK_N}")
    print(f"{label}: identical picks to the reference at N={CHECK_N}, k={CHECK_K}")

    timed = make(args.ref_n, 2, True)
    (_, ref_times), _, ref_peak = traced(lambda: reference_select(timed.matrix, timed.target, TIMED_PICKS))
    ref_pick = float(np.mean(ref_times))
    ours_pick = ours_per_pick(make(args.ref_n, 2, False) if "factored" in label else timed)
    timed = None  # free the reference-sized matrix before the full-size run
    print(f"{label}: reference {ref_pick:.3f} s/pick, ours {ours_pick * 1e3:.2f} ms/pick at N={args.ref_n} "
          f"(reference peak {ref_peak / MIB:.0f} MiB)")
    print(f"select {label} / reference per pick: {ref_pick / ours_pick:.1f}x")

    full = make(args.n, 3, "factored" not in label)
    result, seconds, peak = traced(lambda: greedy_select(full, args.k))
    print(f"{label}: ours N={args.n} k={args.k}: {seconds:.1f} s total, {seconds / args.k * 1e3:.1f} ms/pick, "
          f"(setup {result.setup_seconds:.1f} s), peak working memory {peak / MIB:.0f} MiB beyond {full.matrix.nbytes / MIB if 'dense' in label else 0:.0f} MiB "
          f"of features; exact refreshes {result.refreshes}, rechecked {result.rechecked}")
    print(f"reference per pick x k / select {label} total (N={args.ref_n} ref, N={args.n} ours): "
          f"{ref_pick * args.k * args.n / args.ref_n / seconds:.1f}x (reference extrapolated linearly in N)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows for our full run")
    parser.add_argument("--k", type=int, default=1000, help="picks of our full run")
    parser.add_argument("--ref-n", type=int, default=20_000, help="rows at which both are timed per pick")
    parser.add_argument("--case", choices=["dense", "factored", "both"], default="both")
    args = parser.parse_args()
    if args.case in ("dense", "both"):
        run_case("dense", lambda n, seed, dense: dense_features(n, seed), args)
    if args.case in ("factored", "both"):
        run_case("factored", factored_features, args)


if __name__ == "__main__":
    main()
