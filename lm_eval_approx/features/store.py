"""A feature store on disk: projected per-example gradients, memory-mapped, resumable, mergeable.

Layout of a store folder::

    meta.json        what produced the features (model fingerprints, task, parameter set,
                     projection kind/dim/seed, checkpoint alpha, ids fingerprint, shapes)
    ids.json         the N document ids, in row order
    features.f16     N×d float16 memmap, row i = P g_i
    loss.f32         N float32, the task loss of example i at the store's parameters
    labels.i64       N int64, the label the loss used (-1 for language modelling)
    sqnorm.f32       N float32, ‖g_i‖²: exact (factored identity) or ‖P g_i‖², as meta["sqnorm"] says
    factor_a.f16     optional (N, r, d1): low-rank head factors P_out δ
    factor_b.f16     optional (N, r, d2): low-rank head factors P_in x,
                     with features[i] == Σ_r outer(factor_a[i, r], factor_b[i, r]).ravel()
    done.u8          N uint8 completion mask (1 = row written and flushed)
    target.npy       d float32, the projected target P(θ0 − θf)

Resume protocol: rows are written into the memmaps, the memmaps are flushed, and only then is the
completion mask set and flushed, so a mask bit never claims a row whose data could be lost.
``meta.json``, ``ids.json`` and ``target.npy`` are written atomically (temp file, fsync, replace).
A store opened with ``expect`` raises ``StoreMismatchError`` when any expected field differs, so
features of different runs are never silently mixed. Opening also checks every column file's size
against N and the shapes in ``meta.json``: a truncated file raises ``StoreCorruptError`` (and
``open_or_create`` moves the damaged store aside with a warning and builds it again).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_approx.cache.atomic import write_json_atomic
from lm_eval_approx.cache.integrity import CorruptCacheError, quarantine
from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.errors import ApproxError, ConfigError, StoreMismatchError
from lm_eval_approx.features.gradient_features import GradientFeatures

FORMAT_VERSION = 1
META_FILE = "meta.json"
IDS_FILE = "ids.json"
TARGET_FILE = "target.npy"
DONE_FILE = "done.u8"
FEATURE_DTYPE = np.float16
COLUMNS = {
    "features": ("features.f16", FEATURE_DTYPE),
    "loss": ("loss.f32", np.float32),
    "labels": ("labels.i64", np.int64),
    "sqnorm": ("sqnorm.f32", np.float32),
    "factor_a": ("factor_a.f16", FEATURE_DTYPE),
    "factor_b": ("factor_b.f16", FEATURE_DTYPE),
}
NO_LABEL = -1
MERGE_BLOCK = 65536

logger = logging.getLogger(__name__)


class StoreCorruptError(CorruptCacheError):
    """A store file is shorter or longer than its meta.json says, or cannot be read at all."""


class FeatureOverflowError(ApproxError, ValueError):
    """Gradient features are not finite or do not fit the store's float16 range."""


def ids_fingerprint(ids: list[str]) -> str:
    """A short hash of the ordered ids: two stores with equal fingerprints hold the same rows."""
    return short_hash(f"{doc_id}\0" for doc_id in ids)


class FeatureStore:
    """Memory-mapped features of N examples; see the module docstring for the layout."""

    def __init__(self, path: Path, meta: dict, ids: list[str], mode: str):
        self.path, self.meta, self.ids, self.mode = Path(path), meta, ids, mode
        n, dim = len(ids), int(meta["dim"])
        shape_of = {"features": (n, dim), "loss": (n,), "labels": (n,), "sqnorm": (n,)}
        if meta.get("factor_shape"):
            r, d1, d2 = meta["factor_shape"]
            shape_of.update(factor_a=(n, r, d1), factor_b=(n, r, d2))
        if mode != "w+":
            _check_sizes(self.path, {**{COLUMNS[k]: v for k, v in shape_of.items()},
                                     (DONE_FILE, np.uint8): (n,)})
        self._maps = {
            name: _memmap(self.path / COLUMNS[name][0], COLUMNS[name][1], shape, mode)
            for name, shape in shape_of.items()
        }
        self.done = _memmap(self.path / DONE_FILE, np.uint8, (n,), mode)
        self.target = _load_target(self.path / TARGET_FILE, dim)

    # ---- creation and opening -------------------------------------------------------------
    @classmethod
    def create(cls, path, meta: dict, ids: list[str], dim: int,
               factor_shape: tuple[int, int, int] | None = None) -> "FeatureStore":
        """A new empty store (all rows pending). ``meta`` holds the run's identifying fields."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / META_FILE).exists():
            raise StoreMismatchError(f"a feature store already exists at {str(path)!r}; open it instead")
        full = dict(meta, format=FORMAT_VERSION, dim=int(dim), num_examples=len(ids),
                    ids_fingerprint=ids_fingerprint(ids),
                    factor_shape=list(factor_shape) if factor_shape else None)
        write_json_atomic(path / IDS_FILE, list(ids))
        store = cls(path, full, list(ids), "w+")
        store._maps["labels"][:] = NO_LABEL
        store.flush()
        write_json_atomic(path / META_FILE, full)
        return cls(path, full, list(ids), "r+")

    @classmethod
    def open(cls, path, expect: dict | None = None, mode: str = "r") -> "FeatureStore":
        """Open an existing store; raise ``StoreMismatchError`` if any field of ``expect`` differs."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise StoreMismatchError(f"{str(path)!r} is not a feature store (no {META_FILE})")
        if mode not in ("r", "r+"):
            raise ConfigError("mode", mode, "'r' (read) or 'r+' (resume writing)")
        meta = _read_json(path / META_FILE)
        check_meta(meta, expect or {}, path)
        ids = _read_json(path / IDS_FILE)
        if ids_fingerprint(ids) != meta["ids_fingerprint"]:
            raise StoreMismatchError(f"{str(path)!r}: ids.json does not match meta.json")
        return cls(path, meta, ids, mode)

    @classmethod
    def open_or_create(cls, path, meta: dict, ids: list[str], dim: int,
                       factor_shape: tuple[int, int, int] | None = None) -> "FeatureStore":
        """Resume the store at ``path`` if it was made for exactly these inputs, else create it."""
        path = Path(path)
        if (path / META_FILE).exists():
            expect = dict(meta, dim=int(dim), num_examples=len(ids), ids_fingerprint=ids_fingerprint(ids),
                          factor_shape=list(factor_shape) if factor_shape else None)
            try:
                return cls.open(path, expect=expect, mode="r+")
            except StoreCorruptError as exc:
                moved = quarantine(path)
                message = f"{exc}; moved it to {str(moved)!r} and rebuilding the store"
                logger.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
        return cls.create(path, meta, ids, dim, factor_shape)

    # ---- columns ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def features(self) -> np.ndarray:
        return self._maps["features"]

    @property
    def loss(self) -> np.ndarray:
        return self._maps["loss"]

    @property
    def labels(self) -> np.ndarray:
        return self._maps["labels"]

    @property
    def sqnorm(self) -> np.ndarray:
        return self._maps["sqnorm"]

    @property
    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        if "factor_a" not in self._maps:
            return None
        return self._maps["factor_a"], self._maps["factor_b"]

    @property
    def alpha(self) -> float:
        return float(self.meta.get("alpha", 1.0))

    @property
    def complete(self) -> bool:
        return bool(self.done.all()) and self.target is not None

    def pending(self) -> np.ndarray:
        """Row positions not yet written, ascending."""
        return np.flatnonzero(self.done == 0)

    # ---- writing ---------------------------------------------------------------------------
    def write_rows(self, rows: np.ndarray, features: np.ndarray, loss: np.ndarray,
                   labels: np.ndarray, sqnorm: np.ndarray,
                   factors: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Write a batch of rows, flush, then mark them done (see the resume protocol)."""
        self._check_writable()
        rows = np.asarray(rows, dtype=np.int64)
        cast = np.asarray(features, dtype=np.float32).astype(FEATURE_DTYPE)
        if not np.isfinite(cast).all():
            raise FeatureOverflowError(
                f"gradient features of rows {rows[:4].tolist()} overflow float16 (max |value| "
                f"{np.abs(features).max():.3g}, accepted < {np.finfo(FEATURE_DTYPE).max:.0f}); "
                "the model's gradients are not finite or far too large — check the checkpoint"
            )
        self._maps["features"][rows] = cast
        self._maps["loss"][rows] = loss
        self._maps["labels"][rows] = labels
        self._maps["sqnorm"][rows] = sqnorm
        if self.factors is not None:
            if factors is None:
                raise ConfigError("factors", None, f"this store keeps low-rank factors {self.meta['factor_shape']}")
            self._maps["factor_a"][rows] = factors[0]
            self._maps["factor_b"][rows] = factors[1]
        self.flush()
        self.done[rows] = 1
        if isinstance(self.done, np.memmap):  # an empty store holds plain arrays (nothing to flush)
            self.done.flush()

    def set_target(self, target: np.ndarray) -> None:
        """Store the projected target P(θ0 − θf) (atomically)."""
        self._check_writable()
        target = np.asarray(target, dtype=np.float32)
        if target.shape != (self.dim,):
            raise ConfigError("target", target.shape, f"a vector of length dim={self.dim}")
        tmp = self.path / f".{TARGET_FILE}.tmp.npy"
        np.save(tmp, target)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path / TARGET_FILE)
        self.target = target

    def flush(self) -> None:
        for array in self._maps.values():
            if isinstance(array, np.memmap):
                array.flush()

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise StoreMismatchError(f"store {str(self.path)!r} was opened read-only")

    # ---- consumers --------------------------------------------------------------------------
    def gradient_features(self) -> GradientFeatures:
        """The store as strategies consume it (features stay memory-mapped)."""
        if not self.complete or self.target is None:
            raise StoreMismatchError(
                f"store {str(self.path)!r} is incomplete ({int(self.done.sum())}/{len(self)} rows"
                f"{', no target' if self.target is None else ''}); rerun the features command to resume"
            )
        return GradientFeatures(matrix=self.features, target=self.target, alpha=self.alpha,
                                factors=self.factors)

    @classmethod
    def merge(cls, shards: list["FeatureStore"], path, meta: dict) -> "FeatureStore":
        """Concatenate complete shard stores (in order) into one store at ``path``."""
        for shard in shards:
            if not shard.complete:
                raise StoreMismatchError(f"shard {str(shard.path)!r} is incomplete; cannot merge")
            if shard.dim != shards[0].dim or shard.meta.get("factor_shape") != shards[0].meta.get("factor_shape"):
                raise StoreMismatchError(f"shard {str(shard.path)!r} has another dim or factor shape")
        ids = [doc_id for shard in shards for doc_id in shard.ids]
        shape = shards[0].meta.get("factor_shape")
        store = cls.open_or_create(path, meta, ids, shards[0].dim, tuple(shape) if shape else None)
        start = 0
        for shard in shards:
            for lo in range(0, len(shard), MERGE_BLOCK):
                part = slice(lo, min(lo + MERGE_BLOCK, len(shard)))
                rows = np.arange(start + part.start, start + part.stop)
                factors = None if shard.factors is None else (shard.factors[0][part], shard.factors[1][part])
                store.write_rows(rows, shard.features[part], shard.loss[part], shard.labels[part],
                                 shard.sqnorm[part], factors)
            start += len(shard)
        store.set_target(shards[0].gradient_features().target)
        return store


def check_meta(meta: dict, expect: dict, path: Path | str = "") -> None:
    """Raise ``StoreMismatchError`` naming every field where ``meta`` differs from ``expect``."""
    diffs = [f"{key}: stored {meta.get(key)!r}, expected {value!r}"
             for key, value in sorted(expect.items()) if _normal(meta.get(key)) != _normal(value)]
    if diffs:
        raise StoreMismatchError(
            f"feature store {str(path)!r} was written for other inputs ({'; '.join(diffs)}). "
            "Use another output folder or delete this one."
        )


def _normal(value: Any) -> Any:
    """JSON-normalised value, so tuples and lists (and ints and floats) compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def _read_json(path: Path) -> Any:
    """A store's JSON file; unreadable (damaged on disk) → ``StoreCorruptError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreCorruptError(f"feature store file {str(path)!r} cannot be read ({exc})") from exc


def _check_sizes(folder: Path, shapes: dict[tuple[str, Any], tuple[int, ...]]) -> None:
    """Raise ``StoreCorruptError`` naming each column file whose byte size is not N×row bytes."""
    problems = []
    for (name, dtype), shape in shapes.items():
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if expected == 0:
            continue
        path = folder / name
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            problems.append(f"{name}: {'missing' if size is None else f'{size} bytes'}, expected {expected} "
                            f"for shape {tuple(shape)}")
    if problems:
        raise StoreCorruptError(f"feature store {str(folder)!r} is damaged: {'; '.join(problems)}")


def _load_target(path: Path, dim: int) -> np.ndarray | None:
    """The stored target vector, None when not written yet; unreadable → ``StoreCorruptError``."""
    if not path.exists():
        return None
    try:
        target = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise StoreCorruptError(f"feature store file {str(path)!r} cannot be read ({exc})") from exc
    if target.shape != (dim,):
        raise StoreCorruptError(f"feature store file {str(path)!r} holds shape {target.shape}, expected ({dim},)")
    return target


def _memmap(path: Path, dtype, shape: tuple[int, ...], mode: str) -> np.ndarray:
    if any(s == 0 for s in shape):
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode=mode, shape=shape)  # type: ignore[call-overload]  # numpy types mode as literals
