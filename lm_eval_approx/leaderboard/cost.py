"""What a cell's selection cost in model work, a number that does not depend on the machine.

Seconds depend on the machine and on what the cache already held; FLOPs do not. Each stage a
cell's selection used is counted with the usual estimates for a dense transformer of P parameters:
2·P per token of a forward pass, 6·P per token of a forward and backward pass (gradient features;
an upper bound for the head parameter set, whose backward stops at the head), 2·P per generated
token (one forward per token, with a key-value cache). Tokens are counted with θ0's tokenizer:

* pseudo-labels (θf) and θ0's losses: one forward over every pool document in the task's prompt
  (with ``fused_labels``, θf's pseudo-labels come from its own feature store's pass, counted once
  as that store);
* gradient features: one forward and backward over the same, per synthetic checkpoint;
* generations: the tokens the stage recorded (two models' worth for the contrast sampler);
* θ0's pooled hidden states (``rds``): one forward over the pool's and the targets' raw texts;
* the sentence model (``gen_knn``): the same with its own P (all-MiniLM-L6-v2, 22.7M).

DSIR's n-gram counts and every greedy or sort are not model work and count as 0.
"""

from __future__ import annotations

import json
from functools import lru_cache

from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.cache.stages import DONE_FILE
from lm_eval_approx.features.generation import GENERATION_STAGE, TEXTS_FILE
from lm_eval_approx.leaderboard.config import Cell, LeaderboardConfig
from lm_eval_approx.pipeline import (
    BASE_LOSS_STAGE,
    FEATURE_STAGE,
    FUSED_STORE_SECONDS,
    LABEL_STAGE,
    STAGE_ALPHA_SEPARATOR,
)
from lm_eval_approx.strategies.base import BASE_ENCODER, SENTENCE_ENCODER, TARGET_TEXTS
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

FORWARD, FORWARD_BACKWARD = 2, 6  # FLOPs per parameter per token


@lru_cache(maxsize=4)
def parameter_count(model: str) -> int:
    """Parameters of the model named ``model`` (θ0), counted once per process: from its files where
    ``models/size.py`` can (no weights loaded: a 1B model costs 5 GB to load), else by loading it."""
    from lm_eval_approx.models.loading import load_model
    from lm_eval_approx.models.size import parameter_count as without_loading

    return without_loading(model) or int(sum(p.numel() for p in load_model(model).parameters()))


@lru_cache(maxsize=1)
def sentence_model_parameters() -> int:
    from lm_eval_approx.data.similarity import _embedder

    return int(sum(p.numel() for p in _embedder()[1].parameters()))


@lru_cache(maxsize=8)
def _pool_tokens(base: str, task: str, corpus: str, size: int | None, seed: int, max_length: int) -> tuple[int, int]:
    """(tokens of the pool in the task's prompt, capped as the stages cap them; raw tokens)."""
    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.features.encoding import tok_encode
    from lm_eval_approx.models.loading import load_tokenizer

    spec, tokenizer = get_task_spec(task), load_tokenizer(base)
    texts = load_corpus(corpus, size, seed).texts
    raw = [len(tok_encode(tokenizer, text)) for text in texts]
    if spec.kind == CLASSIFICATION:
        prompted = sum(min(len(tok_encode(tokenizer, spec.context(text))) + 1, max_length) for text in texts)
    else:
        prompted = sum(raw)
    return prompted, sum(raw)


def _stage_info(name: str, key: str) -> dict:
    done = cache_path("stages", name, key, DONE_FILE, field=f"{name} stage key")
    return json.loads(done.read_text(encoding="utf-8")).get("info", {})


def _target_tokens(config: LeaderboardConfig, cell: Cell, keys: dict[str, str]) -> int:
    """Raw tokens of the target texts the cell's strategy aimed at."""
    from lm_eval_approx.features.encoding import tok_encode
    from lm_eval_approx.models.loading import load_tokenizer
    from lm_eval_approx.pipeline import TARGET_SEED
    from lm_eval_approx.training.examples import task_examples

    if GENERATION_STAGE in keys:
        folder = cache_path("stages", GENERATION_STAGE, keys[GENERATION_STAGE], TEXTS_FILE, field="generation key")
        texts = json.loads(folder.read_text(encoding="utf-8"))
    else:
        size = {**config.approx, **config.strategy(cell.label).approx}.get("target_size", 256)
        texts = [e.text for e in task_examples(get_task_spec(config.task), size, TARGET_SEED)]
    tokenizer = load_tokenizer(config.base)
    return sum(len(tok_encode(tokenizer, text)) for text in texts)


def selection_cost(config: LeaderboardConfig, cell: Cell, keys: dict[str, str]) -> dict[str, float | int]:
    """FLOPs and token counts of the selection work of ``cell``, whose stages are ``keys`` (label →
    key, as the approximation reports them)."""
    approx = {**config.approx, **config.strategy(cell.label).approx}
    max_length = approx.get("extract_max_length", 128)
    prompted, raw = _pool_tokens(config.base, config.task, config.corpus.spec, config.corpus.size,
                                 config.corpus.seed, max_length)
    params = parameter_count(config.base)
    names = [label.split(STAGE_ALPHA_SEPARATOR)[0] for label in keys]
    if LABEL_STAGE in keys and FUSED_STORE_SECONDS in _stage_info(LABEL_STAGE, keys[LABEL_STAGE]):
        # fused labels: θf's pseudo-labels came from its own store's forward and backward, one pass
        # (counted once, as the α = 1 features, whether or not this cell's strategy reads them)
        names = [FEATURE_STAGE if name == LABEL_STAGE else name for name in names]
        if FEATURE_STAGE in keys:
            names.remove(FEATURE_STAGE)
    forward = prompted * sum(name in (LABEL_STAGE, BASE_LOSS_STAGE) for name in names)
    backward = prompted * names.count(FEATURE_STAGE)
    generated = int(_stage_info(GENERATION_STAGE, keys[GENERATION_STAGE]).get("generated_tokens", 0)) \
        if GENERATION_STAGE in keys else 0
    flops = FORWARD * params * (forward + generated) + FORWARD_BACKWARD * params * backward
    needs = strategy_registry().get(config.strategy(cell.label).name).obj.requires
    if TARGET_TEXTS in needs and needs & {BASE_ENCODER, SENTENCE_ENCODER}:
        encoded = raw + _target_tokens(config, cell, keys)
        if BASE_ENCODER in needs:
            forward += encoded
            flops += FORWARD * params * encoded
        if SENTENCE_ENCODER in needs:
            flops += FORWARD * sentence_model_parameters() * encoded
    return {"flops": float(flops), "forward_tokens": int(forward), "backward_tokens": int(backward),
            "generated_tokens": generated}
