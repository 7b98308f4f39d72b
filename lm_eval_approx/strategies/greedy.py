"""Incremental greedy SELECT: k picks of argmax_{i∉S} cos(s + g_i, t), exact, in O(N·d) per pick.

The direct definition recomputes every cos(s + g_i, t) from scratch. With cached
a_i = ⟨g_i, t⟩ and n_i = ‖g_i‖² (float64, once) and c_i = ⟨g_i, s⟩ for the running sum s,

    cos(s + g_i, t) = (a_i + ⟨s, t⟩) / (‖t‖ · sqrt(n_i + 2 c_i + ‖s‖²)),

and after picking j only c changes: c ← c + G g_j, one Gram column (Morris et al. 2025, §3;
docs/ARCHITECTURE.md, "Incremental greedy"). Views of the features:

- dense: the N×d matrix stays in its own dtype (float16 from the store, memory-mapped); each
  Gram column streams it in blocks of rows converted to float32 (one pass, O(N·d), no N×N);
- factored head features g_i = Σ_r A_ir ⊗ B_ir: ⟨g_i, g_j⟩ = Σ_pq (A_ip·A_jq)(B_ip·B_jq),
  O(N·r²·(d1 + d2)) per column, in float64.

Exact picks. Each c_i carries a rigorous bound E_i on its rounding error (for a float32 dot of
length d: |error| ≤ (d + 2)·2⁻²⁴·Σ|x_k y_k| ≤ (d + 2)·2⁻²⁴·sqrt(n_i n_j), Cauchy–Schwarz). The
score is monotone in c_i, so [c − E, c + E] gives an interval for every score; only candidates
whose upper bound reaches the best lower bound are rescored in float64 by the direct formula
(cos of the dense row s + g_i), so the pick equals the direct definition's, ties to the lowest
index. If too many candidates remain, every c is recomputed in float64 and E reset.

Synthetic checkpoints: with M views (features at θ0 + (j/M)(θf − θ0)) the score is the mean of
the M cosines, each view keeping its own s, c, E. ``batch_size`` b resets s every b picks
(select_batched). A zero vector has cosine 0 by convention.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from lm_eval_approx.errors import SelectionError
from lm_eval_approx.features.gradient_features import GradientFeatures

BLOCK_ROWS = 256  # rows converted to float32 at a time: a 4096-wide block is 4 MiB, cache-sized
UNIT_ROUNDOFF_32 = 2.0**-24
UNIT_ROUNDOFF_64 = 2.0**-53
BOUND_SAFETY = 2.0  # margin on the rigorous rounding bounds
SCORE_SLACK = 1e-12  # cosines lie in [−1, 1]: absolute slack for float64 rounding of the bounds
MAX_RECHECK = 512  # more candidates than this in the tie window: recompute all c in float64
# Threads of the streaming Gram column. The pass is memory-bound, so extra threads gain little,
# while on a shared machine each of the many small parallel regions (one per block) can stall on
# a descheduled thread: measured 20x slower with 2 threads than with 1 under load.
STREAM_THREADS = 1


@contextmanager
def _torch_threads(count: int | None):
    """Run a block with ``count`` torch threads (None: leave as is), restoring the setting."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _row_cosines(rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cos(row, t) per row in float64; per-row reductions so a row's value never depends on
    which other rows share the call (duplicates tie exactly). Zero rows score 0."""
    dots = (rows * target).sum(axis=1)
    norms = np.sqrt((rows * rows).sum(axis=1)) * np.sqrt((target * target).sum())
    out = np.zeros(len(rows))
    nz = norms > 0
    out[nz] = dots[nz] / norms[nz]
    return out


class _DenseView:
    """Dense features, read in row blocks in their stored dtype."""

    def __init__(self, feats: GradientFeatures, block_rows: int, threads: int | None = STREAM_THREADS):
        self.matrix = feats.matrix
        self.threads = threads
        self.target = np.asarray(feats.target, dtype=np.float64)
        self.n_rows, self.dim = self.matrix.shape
        self.block_rows = block_rows
        self.err_coef = BOUND_SAFETY * (self.dim + 2) * UNIT_ROUNDOFF_32
        self.err_coef64 = BOUND_SAFETY * (self.dim + 2) * UNIT_ROUNDOFF_64
        a = np.empty(self.n_rows)
        n = np.empty(self.n_rows)
        for lo, block in self._blocks(np.float64):
            a[lo : lo + len(block)] = block @ self.target
            n[lo : lo + len(block)] = (block * block).sum(axis=1)
        self.a, self.n = a, n
        self.scale = np.sqrt(n)  # Σ_k |g_ik y_k| ≤ ‖g_i‖‖y‖

    def _blocks(self, dtype):
        for lo in range(0, self.n_rows, self.block_rows):
            yield lo, np.asarray(self.matrix[lo : lo + self.block_rows], dtype=dtype)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx)
        out = np.empty((len(idx), self.dim))
        out[order] = np.asarray(self.matrix[idx[order]], dtype=np.float64)
        return out

    def gram_column(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """⟨g_i, g_j⟩ for all i (float32 products) and the bound on each one's error."""
        vec = torch.from_numpy(np.asarray(self.matrix[j], dtype=np.float32))
        out = torch.empty(self.n_rows, dtype=torch.float32)
        buf = torch.empty((self.block_rows, self.dim), dtype=torch.float32)
        with _torch_threads(self.threads), warnings.catch_warnings():
            # read-only memory maps: torch warns that they are not writable; we only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for lo in range(0, self.n_rows, self.block_rows):
                hi = min(lo + self.block_rows, self.n_rows)
                b = buf[: hi - lo]
                b.copy_(torch.from_numpy(np.asarray(self.matrix[lo:hi])))
                torch.mv(b, vec, out=out[lo:hi])
        return out.numpy().astype(np.float64), self.err_coef * self.scale * self.scale[j]

    def dot_all(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """⟨g_i, s⟩ for all i in float64 and the bound on each one's error."""
        c = np.empty(self.n_rows)
        for lo, block in self._blocks(np.float64):
            c[lo : lo + len(block)] = block @ s
        return c, self.err_coef64 * self.scale * np.linalg.norm(s)


class _FactoredView:
    """Head features kept as factors A (N, r, d1), B (N, r, d2): g_i = Σ_r A_ir ⊗ B_ir."""

    def __init__(self, feats: GradientFeatures):
        fa, fb = feats.factors  # type: ignore[misc]  # make_views builds this view only for features with factors
        self.A = np.asarray(fa, dtype=np.float64)
        self.B = np.asarray(fb, dtype=np.float64)
        if self.A.ndim != 3 or self.B.ndim != 3 or self.A.shape[:2] != self.B.shape[:2]:
            raise SelectionError(
                f"factors must have shapes (N, r, d1) and (N, r, d2), got {self.A.shape} and {self.B.shape}"
            )
        self.n_rows, self.rank, d1 = self.A.shape
        d2 = self.B.shape[2]
        if d1 * d2 != feats.matrix.shape[1] or self.n_rows != feats.matrix.shape[0]:
            raise SelectionError(
                f"factors (N={self.n_rows}, d1={d1}, d2={d2}) do not match features of shape {feats.matrix.shape}"
            )
        self.dim = d1 * d2
        self.target = np.asarray(feats.target, dtype=np.float64)
        tmat = self.target.reshape(d1, d2)
        self.a = np.einsum("nrp,pq,nrq->n", self.A, tmat, self.B)
        self.n = self._gram_rows(self.A, self.B).sum(axis=(1, 2))
        # Σ_pq |A_ip·A_jq||B_ip·B_jq| ≤ m_i m_j with m_i = Σ_p ‖A_ip‖‖B_ip‖
        self.scale = (np.linalg.norm(self.A, axis=2) * np.linalg.norm(self.B, axis=2)).sum(axis=1)
        self.err_coef = BOUND_SAFETY * (d1 + d2 + self.rank**2 + 2) * UNIT_ROUNDOFF_64
        self.err_coef_dot = BOUND_SAFETY * (d1 * d2 + self.rank + 2) * UNIT_ROUNDOFF_64

    def _gram_rows(self, A_j: np.ndarray, B_j: np.ndarray) -> np.ndarray:
        """(N, r, r') matrix of (A_ip·A_jq)(B_ip·B_jq) for one j (A_j: (r', d1)) or all i=j."""
        if A_j.ndim == 3:
            return np.einsum("nrp,nsp->nrs", A_j, A_j) * np.einsum("nrq,nsq->nrs", B_j, B_j)
        return (self.A @ A_j.T) * (self.B @ B_j.T)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.einsum("nrp,nrq->npq", self.A[idx], self.B[idx]).reshape(len(idx), self.dim)

    def gram_column(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        col = self._gram_rows(self.A[j], self.B[j]).sum(axis=(1, 2))
        return col, self.err_coef * self.scale * self.scale[j]

    def dot_all(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        smat = s.reshape(self.A.shape[2], self.B.shape[2])
        c = np.einsum("nrp,pq,nrq->n", self.A, smat, self.B)
        return c, self.err_coef_dot * self.scale * np.abs(smat).sum()


@dataclass
class _ViewState:
    """Running sum s of one view and everything cached about it."""

    view: _DenseView | _FactoredView
    s: np.ndarray = field(init=False)
    c: np.ndarray = field(init=False)
    err: np.ndarray = field(init=False)
    st: float = 0.0
    ss: float = 0.0

    def __post_init__(self) -> None:
        self.tnorm = float(np.sqrt(self.view.target @ self.view.target))
        self.reset()

    def reset(self) -> None:
        self.s = np.zeros(self.view.dim)
        self.c = np.zeros(self.view.n_rows)
        self.err = np.zeros(self.view.n_rows)
        self.st = self.ss = 0.0

    def add(self, j: int) -> None:
        col, col_err = self.view.gram_column(j)
        self.c += col
        self.err += col_err
        self.s += self.view.rows(np.array([j]))[0]
        self.st = float(self.s @ self.view.target)
        self.ss = float(self.s @ self.s)

    def refresh(self) -> None:
        self.c, self.err = self.view.dot_all(self.s)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bound of every cos(s + g_i, t) given |c_i − ⟨g_i, s⟩| ≤ E_i."""
        num = self.view.a + self.st
        base = self.view.n + self.ss
        den_lo = np.sqrt(np.maximum(base + 2 * (self.c - self.err), 0.0)) * self.tnorm
        den_hi = np.sqrt(np.maximum(base + 2 * (self.c + self.err), 0.0)) * self.tnorm
        with np.errstate(divide="ignore", invalid="ignore"):
            at_lo = np.where(den_lo > 0, num / den_lo, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))
            at_hi = np.where(den_hi > 0, num / den_hi, 0.0)
        lower, upper = np.minimum(at_lo, at_hi), np.maximum(at_lo, at_hi)
        return lower - SCORE_SLACK, upper + SCORE_SLACK

    def exact(self, idx: np.ndarray) -> np.ndarray:
        return _row_cosines(self.view.rows(idx) + self.s, self.view.target)


@dataclass
class GreedyResult:
    """Picks in order, the (mean) cosine of each at pick time, and how the run went."""

    indices: np.ndarray
    scores: np.ndarray
    stopped_early: bool = False
    rechecked: int = 0
    refreshes: int = 0
    setup_seconds: float = 0.0
    pick_seconds: float = 0.0


def make_views(features: GradientFeatures | Sequence[GradientFeatures], use_factors: bool = True,
               block_rows: int = BLOCK_ROWS) -> list[_DenseView | _FactoredView]:
    """One view per set of features: factored when factors are present (and wanted), else dense."""
    feats = [features] if isinstance(features, GradientFeatures) else list(features)
    if not feats:
        raise SelectionError("greedy selection needs at least one set of gradient features")
    sizes = {f.matrix.shape[0] for f in feats}
    if len(sizes) != 1:
        raise SelectionError(f"all checkpoints must have the same number of rows, got {sorted(sizes)}")
    return [_FactoredView(f) if (use_factors and f.factors is not None) else _DenseView(f, block_rows)
            for f in feats]


def greedy_select(features: GradientFeatures | Sequence[GradientFeatures], k: int, *,
                  batch_size: int | None = None, min_cosine: float | None = None,
                  use_factors: bool = True, block_rows: int = BLOCK_ROWS,
                  eligible: np.ndarray | None = None, groups: np.ndarray | None = None,
                  quotas: Sequence[int] | np.ndarray | None = None) -> GreedyResult:
    """k exact greedy picks of argmax_{i∉S} mean_m cos(s_m + g_i^(m), t_m), ties to the lowest id.

    ``batch_size`` resets every s_m after each b picks; ``min_cosine`` stops before a pick whose
    score falls below it (fewer than k picks, ``stopped_early``). Constraints: only ``eligible``
    rows (a boolean mask) are picked, and at most ``quotas[c]`` rows of each group c of ``groups``
    (an integer label per row); the picks stop early when no allowed row is left.
    """
    start = time.perf_counter()
    views = make_views(features, use_factors, block_rows)
    n_rows = views[0].n_rows
    if not 0 <= k <= n_rows:
        raise SelectionError(f"k={k} is out of range for {n_rows} candidates (accepted: 0 ≤ k ≤ {n_rows})")
    if batch_size is not None and batch_size < 1:
        raise SelectionError(f"batch_size={batch_size} is not accepted: a positive integer")
    states = [_ViewState(v) for v in views]
    taken = _initially_excluded(n_rows, eligible, groups, quotas)
    left = None if quotas is None else np.asarray(quotas, dtype=np.int64).copy()
    picks, scores = [], []
    result = GreedyResult(np.zeros(0, dtype=np.int64), np.zeros(0))
    result.setup_seconds = time.perf_counter() - start
    for step in range(k):
        if step and _batch_ends(step, batch_size):
            for st in states:
                st.reset()
        if taken.all():
            result.stopped_early = True
            break
        cand = _window(states, taken)
        if len(cand) > MAX_RECHECK:
            for st in states:
                st.refresh()
            result.refreshes += 1
            cand = _window(states, taken)
        exact = np.mean([st.exact(cand) for st in states], axis=0)
        result.rechecked += len(cand)
        best = int(np.argmax(exact))  # cand is sorted: the first maximum is the lowest id
        if min_cosine is not None and exact[best] < min_cosine:
            result.stopped_early = True
            break
        j = int(cand[best])
        picks.append(j)
        scores.append(float(exact[best]))
        taken[j] = True
        if left is not None and groups is not None:  # quotas come with groups (_initially_excluded)
            left[groups[j]] -= 1
            if left[groups[j]] <= 0:
                taken[groups == groups[j]] = True
        # The last pick of a batch is not added: s restarts from 0 at the next step, so its Gram
        # column (one pass over the features) would be discarded.
        if step + 1 < k and not _batch_ends(step + 1, batch_size):
            for st in states:
                st.add(j)
    result.indices = np.asarray(picks, dtype=np.int64)
    result.scores = np.asarray(scores)
    result.pick_seconds = time.perf_counter() - start - result.setup_seconds
    return result


def _initially_excluded(n_rows: int, eligible, groups, quotas) -> np.ndarray:
    """The rows no pick may take: not ``eligible``, or in a group whose quota is 0."""
    taken = np.zeros(n_rows, dtype=bool)
    if eligible is not None:
        eligible = np.asarray(eligible)
        if eligible.shape != (n_rows,) or eligible.dtype != bool:
            raise SelectionError(f"eligible must be a boolean mask of {n_rows} rows (got {eligible.dtype} "
                                 f"{eligible.shape})")
        taken |= ~eligible
    if (groups is None) != (quotas is None):
        raise SelectionError("groups and quotas go together: a group label per row and a quota per group")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n_rows,) or not np.issubdtype(groups.dtype, np.integer) or groups.min(initial=0) < 0 \
                or groups.max(initial=-1) >= len(quotas):
            raise SelectionError(f"groups must hold one label in [0, {len(quotas)}) per row")
        if any(q < 0 for q in quotas):
            raise SelectionError(f"quotas must be ≥ 0 (got {list(quotas)})")
        taken |= np.asarray(quotas)[groups] <= 0
    return taken


def _batch_ends(picked: int, batch_size: int | None) -> bool:
    """True when ``picked`` picks close a batch of select_batched (s is reset before the next)."""
    return batch_size is not None and picked % batch_size == 0


def _window(states: list[_ViewState], taken: np.ndarray) -> np.ndarray:
    """Sorted ids of the untaken candidates whose upper bound reaches the best lower bound."""
    lows, highs = zip(*(st.bounds() for st in states))
    lower = np.mean(lows, axis=0)
    upper = np.mean(highs, axis=0)
    lower[taken] = -np.inf
    upper[taken] = -np.inf
    return np.flatnonzero(upper >= lower.max())
