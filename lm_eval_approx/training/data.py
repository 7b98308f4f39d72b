"""Training examples as token ids and loss masks, rendered exactly as lm-eval scores them.

Classification: the context is ``spec.context(text)`` and the target is the label's continuation
``spec.continuations()[label]``, tokenised the way lm-eval's ``_encode_pair`` does (trailing
context whitespace moved into the continuation, ``encode(context + continuation)`` split after
``len(encode(context))`` tokens); only the continuation tokens are supervised, every context
token gets the ignore label -100. Contexts too long for ``max_length`` lose their beginning, as
in lm-eval. Language modelling: the clipped passage is the target, predicted from the prefix
token (BOS, else EOS) as in lm-eval's ``loglikelihood_rolling``; passages longer than
``max_length`` lose their end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lm_eval_approx.errors import ApproxError
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.tasks.specs import CLASSIFICATION, LANGUAGE_MODELLING, TaskSpec

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


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval conditions on when there is no context: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split exactly as lm-eval's HFLM splits them."""
    if not context:
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def render_example(tokenizer, spec: TaskSpec, example: SelectedExample, max_length: int) -> RenderedExample:
    """Token ids and supervised labels of one example (see the module docstring)."""
    if spec.kind == CLASSIFICATION:
        label = example.label
        if label is None or isinstance(label, bool) or not 0 <= label < spec.num_classes:
            raise TrainingDataError(
                f"example {example.id!r}: label={label!r} is not accepted for task {spec.name!r}: "
                f"an integer in [0, {spec.num_classes - 1}] ({', '.join(spec.choices)})"
            )
        context_ids, target_ids = encode_pair(tokenizer, spec.context(example.text), spec.continuations()[label])
        ids = (context_ids + target_ids)[-max_length:]
        labels = ([IGNORE_INDEX] * len(context_ids) + target_ids)[-max_length:]
    elif spec.kind == LANGUAGE_MODELLING:
        tokens = tokenizer.encode(spec.context(example.text))[: max_length - 1]
        ids = [prefix_token_id(tokenizer)] + tokens
        labels = [IGNORE_INDEX] + tokens
    else:
        raise TrainingDataError(
            f"task {spec.name!r}: kind={spec.kind!r} is not accepted: {CLASSIFICATION} or {LANGUAGE_MODELLING}"
        )
    if all(token == IGNORE_INDEX for token in labels[1:]):
        raise TrainingDataError(f"example {example.id!r} has no target tokens within max_length={max_length}")
    return RenderedExample(example.id, ids, labels, float(example.weight))


def render_examples(tokenizer, spec: TaskSpec, examples: list[SelectedExample], max_length: int) -> list[RenderedExample]:
    return [render_example(tokenizer, spec, example, max_length) for example in examples]


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Carve round(fraction · n) examples (at most n - 1) out of the given ones, chosen by seed;
    both parts keep their original order. The task's test split is never involved."""
    n_validation = min(int(round(fraction * len(examples))), max(len(examples) - 1, 0))
    held_out = set(random.Random(seed).sample(range(len(examples)), n_validation))
    train = [e for i, e in enumerate(examples) if i not in held_out]
    validation = [e for i, e in enumerate(examples) if i in held_out]
    return train, validation


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


def collate(rows: list[RenderedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors (lm-eval pads right too, so positions match its scoring)."""
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


def example_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example loss: summed token NLL of the label (classification), mean token NLL of the
    passage (language modelling). logits (B, T, V) at positions t predict labels at t + 1."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    total = nll.sum(dim=1)
    if kind == LANGUAGE_MODELLING:
        return total / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return total
