"""``dsir``: DSIR (Xie et al. 2023, "Data Selection for Language Models via Importance Resampling").

Each text becomes a bag of hashed n-grams, as in the authors' ``HashedNgramDSIR``
(github.com/p-lambda/dsir): lower-cased, split into words and punctuation runs (nltk's
WordPunctTokenizer pattern ``\\w+|[^\\w\\s]+``, DSIR's default tokenizer), every 1..``ngrams``-gram
(words joined by one space) hashed into ``num_buckets`` buckets by
int(sha256(gram, UTF-8)) mod num_buckets, DSIR's own hash: stable across runs and machines,
unlike Python's salted ``hash()``.

Two categorical distributions over buckets are fitted with add-one (Laplace) smoothing,
p(b) = (c_b + 1) / (Σ c + B): p_target from the target texts, p_raw from the pool itself. (DSIR's
code floors the unsmoothed frequencies at 1e-8 instead; add-one keeps an n-gram unseen in the
targets from dominating the weight.) A document's log importance weight is
w_i = Σ_b count_i(b) · (log p_target(b) − log p_raw(b)).

``sampling=gumbel`` (DSIR's resampling): k documents without replacement with probability
∝ exp(w_i), by the Gumbel-top-k trick: the k largest w_i + G_i, G_i ~ Gumbel(0, 1) i.i.d. from
``numpy.random.default_rng(seed)``. ``sampling=topk``: the k largest w_i, deterministic.
Ties go to the lowest pool position. ``Selection.scores`` holds the picks' w_i.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from lm_eval_approx.config_checks import check_choice, check_int, help_field
from lm_eval_approx.errors import SelectionError
from lm_eval_approx.strategies.base import TARGET_TEXTS, CandidatePool, Selection, Strategy
from lm_eval_approx.strategies.nearest import TEXTS, target_texts

TOKEN = re.compile(r"\w+|[^\w\s]+")
GUMBEL, TOPK = "gumbel", "topk"
SAMPLINGS = (GUMBEL, TOPK)


@dataclass
class DsirOptions:
    """Options of dsir."""

    num_buckets: int = help_field("hash buckets of the n-gram features (DSIR's default)", 10000)
    ngrams: int = help_field("longest n-gram: 2 hashes unigrams and bigrams (DSIR's default)", 2)
    sampling: str = help_field(
        "gumbel: sample k without replacement ∝ exp(log importance weight), seeded (DSIR); "
        "topk: the k largest weights", GUMBEL, SAMPLINGS,
    )

    def __post_init__(self) -> None:
        check_int("dsir.num_buckets", self.num_buckets, minimum=1)
        check_int("dsir.ngrams", self.ngrams, minimum=1)
        check_choice("dsir.sampling", self.sampling, SAMPLINGS)


def bucket(gram: str, num_buckets: int) -> int:
    """The bucket of one n-gram: int(sha256(gram)) mod num_buckets."""
    return int.from_bytes(hashlib.sha256(gram.encode("utf-8")).digest(), "big") % num_buckets


class _Buckets(dict):
    """gram -> bucket, hashing each distinct gram once (word frequencies are Zipfian, so most
    lookups hit)."""

    def __init__(self, num_buckets: int):
        super().__init__()
        self.num_buckets = num_buckets

    def __missing__(self, gram: str) -> int:
        value = self[gram] = bucket(gram, self.num_buckets)
        return value


def ngrams_of(text: str, n: int) -> list[str]:
    """The 1..n-grams of a text under the tokenization of the module docstring."""
    words = TOKEN.findall(text.lower())
    grams = list(words)
    for size in range(2, n + 1):
        grams += [" ".join(words[i : i + size]) for i in range(len(words) - size + 1)]
    return grams


def hashed_ngrams(texts: list[str], buckets: _Buckets, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of every n-gram occurrence, position of the text it came from), concatenated."""
    parts, owners = [], []
    for pos, text in enumerate(texts):
        if not isinstance(text, str):
            raise SelectionError(f"{what} must be strings, got a {type(text).__name__} at position {pos}")
        grams = ngrams_of(text, n)
        parts.append(np.fromiter((buckets[g] for g in grams), dtype=np.int64, count=len(grams)))
        owners.append(np.full(len(grams), pos, dtype=np.int64))
    return np.concatenate(parts), np.concatenate(owners)


def log_distribution(occurrences: np.ndarray, num_buckets: int) -> np.ndarray:
    """log p(b) of the add-one smoothed categorical distribution over buckets."""
    counts = np.bincount(occurrences, minlength=num_buckets).astype(np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + num_buckets)


def log_importance_weights(texts: list[str], targets: list[str], num_buckets: int = 10000,
                           n: int = 2) -> tuple[np.ndarray, int]:
    """(w_i for every text, number of target n-grams), the weights of the module docstring."""
    buckets = _Buckets(num_buckets)
    target_occurrences, _ = hashed_ngrams(targets, buckets, n, "target_texts")
    if not len(target_occurrences):
        raise SelectionError("the target texts hold no words or punctuation: DSIR needs target n-grams "
                             "to fit p_target (give non-empty target_texts)")
    occurrences, owners = hashed_ngrams(texts, buckets, n, "pool texts")
    log_ratio = log_distribution(target_occurrences, num_buckets) - log_distribution(occurrences, num_buckets)
    weights = np.bincount(owners, weights=log_ratio[occurrences], minlength=len(texts))
    return weights, len(target_occurrences)


class DsirStrategy(Strategy):
    name = "dsir"
    description = "DSIR: importance resampling on hashed word 1-2-gram features, target vs pool"
    requires = frozenset({TEXTS, TARGET_TEXTS})
    Options = DsirOptions

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        opts = self.options
        targets = target_texts(pool)
        weights, target_ngrams = log_importance_weights(list(pool.texts),  # type: ignore[arg-type]  # requires TEXTS
                                                        targets, opts.num_buckets, opts.ngrams)
        keys = weights
        if opts.sampling == GUMBEL:
            keys = weights + np.random.default_rng(seed).gumbel(size=len(weights))
        picks = np.argsort(-keys, kind="stable")[:k]
        info = {"sampling": opts.sampling, "num_buckets": opts.num_buckets, "ngrams": opts.ngrams,
                "targets": len(targets), "target_ngrams": int(target_ngrams),
                "mean_log_weight": float(weights[picks].mean()), "pool_mean_log_weight": float(weights.mean())}
        return Selection(indices=picks, scores=weights[picks], info=info)
