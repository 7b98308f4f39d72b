"""Training examples as token ids and loss masks, encoded by the one rule of ``features/encoding.py``.

That rule is lm-eval HFLM's (see its module docstring), so training supervises exactly the tokens
lm-eval scores and the gradient features differentiate. Classification: input = context ids +
continuation ids of the label, only the continuation is supervised, every context token gets the
ignore label -100, a context too long for ``max_length`` loses its beginning. Language modelling:
every token of the passage is a target, in lm-eval's rolling windows of at most ``max_length`` ids
(the first predicted from the prefix token); each window is a row whose weight is the example's
times its share n_j / n of the passage's tokens, so the rows' mean-NLL losses add up to the passage's
mean NLL. Losses of these rows live in ``training/loss.py``.
"""

from __future__ import annotations

import dataclasses
import numbers
import random
from collections import Counter
from dataclasses import dataclass

import torch

from lm_eval_approx.config_checks import is_int
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.features.encoding import (
    HFLM_ADD_BOS_TOKEN,
    encode_classification,
    encode_lm,
)
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING, TaskSpec

IGNORE_INDEX = -100


class TrainingDataError(ApproxError, ValueError):
    """A training example cannot be rendered for its task (missing or out-of-range label, no tokens)."""


@dataclass(frozen=True)
class RenderedExample:
    """One training sequence: ``labels[t]`` is the token that position t must produce at t (the
    model's prediction for it comes from position t - 1), or IGNORE_INDEX."""

    id: str
    input_ids: list[int]
    labels: list[int]
    weight: float


def render_example(tokenizer, spec: TaskSpec, example: SelectedExample, max_length: int,
                   add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[RenderedExample]:
    """The training rows of one example (see the module docstring): one for classification, one
    per rolling window for language modelling; ``add_bos_token`` as given to lm-eval's HFLM."""
    if spec.kind == CLASSIFICATION:
        label = example.label
        if label is None or not is_int(label, numbers.Integral) or not 0 <= label < spec.num_classes:
            raise TrainingDataError(
                f"example {example.id!r}: label={label!r} is not accepted for task {spec.name!r}: "
                f"an integer in [0, {spec.num_classes - 1}] ({', '.join(spec.choices)})"
            )
        windows = [encode_classification(tokenizer, spec, example.text, label, max_length, add_bos_token)]
    elif spec.kind == LANGUAGE_MODELLING:
        windows = encode_lm(tokenizer, spec, example.text, max_length, add_bos_token)
    else:
        raise TrainingDataError(
            f"task {spec.name!r}: kind={spec.kind!r} is not accepted: {CLASSIFICATION} or {LANGUAGE_MODELLING}"
        )
    if windows[0].start >= len(windows[0].ids):
        raise TrainingDataError(f"example {example.id!r} has no target tokens within max_length={max_length}")
    total = sum(len(e.ids) - e.start for e in windows)
    return [RenderedExample(example.id, e.ids, [IGNORE_INDEX] * e.start + e.ids[e.start:],
                            float(example.weight) * (len(e.ids) - e.start) / total) for e in windows]


def render_examples(tokenizer, spec: TaskSpec, examples: list[SelectedExample], max_length: int,
                    add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[RenderedExample]:
    """Every training row of every example, in order (a passage's windows are consecutive)."""
    return [row for example in examples for row in render_example(tokenizer, spec, example, max_length,
                                                                   add_bos_token)]


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Carve round(fraction · n) examples (at most n - 1) out of the given ones, chosen by seed;
    both parts keep their original order. The task's test split is never involved."""
    n_validation = min(int(round(fraction * len(examples))), max(len(examples) - 1, 0))
    held_out = set(random.Random(seed).sample(range(len(examples)), n_validation))
    train = [e for i, e in enumerate(examples) if i not in held_out]
    validation = [e for i, e in enumerate(examples) if i in held_out]
    return train, validation


def balance_classes(examples: list) -> list:
    """Examples reweighted so that every label present carries the same total weight:
    w_i ← w_i · n / (C · n_y) for an example of label y, with n examples, C labels present and n_y of
    label y (mean weight stays 1 when the weights were 1). Training on pseudo-labels otherwise teaches
    the pool's label shares as a prior, which a task whose classes are balanced does not have."""
    counts = Counter(e.label for e in examples)
    if None in counts:
        raise ConfigError("class_balance", "balanced", "examples that all carry a class label")
    scale = {label: len(examples) / (len(counts) * count) for label, count in counts.items()}
    return [dataclasses.replace(e, weight=e.weight * scale[e.label]) for e in examples]


def normalise_weights(rows: list[RenderedExample]) -> list[RenderedExample]:
    """Rescale weights to mean 1, so unweighted data trains exactly as with the plain mean loss."""
    if not rows:
        return rows
    mean = sum(r.weight for r in rows) / len(rows)
    return [RenderedExample(r.id, r.input_ids, r.labels, r.weight / mean) for r in rows]


class EpochShuffle(torch.utils.data.Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): a resumed run replays the
    order of the epochs it has not done yet, and every process of a multi-process run agrees."""

    def __init__(self, n: int, seed: int, stride: int):
        self.n, self.seed, self.stride, self.epoch = n, seed, stride, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * self.stride + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def training_batch(rows: list[RenderedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """The training batch of ``rows``: right-padded ``input_ids``, ``attention_mask`` and ``labels``
    (IGNORE_INDEX on padding) plus the per-example ``weight`` (lm-eval pads right too, so positions
    match its scoring)."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        attention_mask[i, : len(r.input_ids)] = 1
    weight = torch.tensor([r.weight for r in rows], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weight": weight}
