"""The training recipe: one validated, JSON-serialisable description of how θ0 is trained.

The same recipe produces a benchmark's expert θf (``lm-eval-approx finetune``) and every
retraining on a selection (``lm-eval-approx train``, the ``approx`` model), so the two differ only
in their data. ``recipe_hash()`` names the recipe in caches and in the adapter folder.

Target modules: the tokens ``all-linear`` (every Linear/Conv1D projection of the transformer
blocks: attention and MLP) and ``head`` (the output head, whatever the architecture calls it) are
resolved against the model at training time; any other entry is a module name as PEFT matches it
(``q_proj``, ``c_attn``, ...). ``lora_layers`` = L > 0 keeps, of those, only the ones in the top L
transformer blocks (plus the head): the backward pass then stops at the lowest adapted block, so
training is cheaper in time and memory (the body below runs forward only, keeping no activations).
``prefix_cache`` then runs that body once per example instead of once per step
(``training/prefix_cache.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.cache.keys import RECIPE_KIND, record_key
from lm_eval_approx.config_checks import (
    MIN_MAX_LENGTH,
    add_field_arguments,
    check_choice,
    check_int,
    check_number,
    field_values,
    help_field,
    parse_json,
)
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.training.precision import AUTO, resolve_precision

LORA = "lora"
FULL = "full"
METHODS = (LORA, FULL)
ALL_LINEAR = "all-linear"
HEAD = "head"
DEFAULT_TARGET_MODULES = (ALL_LINEAR, HEAD)
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
MIXED_PRECISION = ("no", "bf16", "fp16", AUTO)
MAX_VALIDATION_FRACTION = 0.5
VALIDATION_LOSS = "validation_loss"
TEACHER_KL = "teacher_kl"
TEACHER_AGREEMENT = "teacher_agreement"
TASK_KL = "task_kl"
TASK_AGREEMENT = "task_agreement"
TASK_LOSS = "task_loss"
STOP_SIGNALS = (VALIDATION_LOSS, TEACHER_KL, TEACHER_AGREEMENT, TASK_KL, TASK_AGREEMENT, TASK_LOSS)
SHUFFLED = "shuffled"
BUCKETED = "bucketed"
BATCH_ORDERS = (SHUFFLED, BUCKETED)
TORCH_DROPOUT = "torch"
FAST_DROPOUT = "fast"
DROPOUT_SAMPLERS = (TORCH_DROPOUT, FAST_DROPOUT)
NO_BALANCE = "none"
BALANCED = "balanced"
CLASS_BALANCE = (NO_BALANCE, BALANCED)
TASK_MONITOR = "task"
# Where a task_* signal's monitor texts come from: the task's training split, or texts sampled from
# the weights alone (features/generation.py: θf, θ0, or their contrast).
MONITOR_SOURCES = (TASK_MONITOR, "finetuned", "base", "contrast")
POOL_SIGNALS = (TEACHER_KL, TEACHER_AGREEMENT)
TASK_SIGNALS = (TASK_KL, TASK_AGREEMENT, TASK_LOSS)  # measured on the task's training texts
TEACHER_SIGNALS = POOL_SIGNALS + (TASK_KL, TASK_AGREEMENT)  # measured against θf
PROBE_SIGNALS = TEACHER_SIGNALS + (TASK_LOSS,)
# Fields added after caches and results/cpu were keyed: left out of the hash while they hold these
# values (which reproduce the older behaviour), so every existing recipe keeps its hash.
LATER_FIELDS = {"stop_on": VALIDATION_LOSS, "monitor_size": 256, "micro_batch_size": 0,
                "gradient_checkpointing": False, "lora_layers": 0, "class_balance": NO_BALANCE,
                "batch_order": SHUFFLED, "dropout_sampler": TORCH_DROPOUT,
                "monitor_source": TASK_MONITOR, "prefix_cache": False}
# The training path before the fast one became the default (a real grid row, 3 seeds: within the seed
# noise): what a saved recipe that lacks these fields ran.
OLD_TRAINING_PATH = {"mixed_precision": "no", "batch_order": SHUFFLED, "dropout_sampler": TORCH_DROPOUT}
# Peak memory, not the update, is what micro-batches change: training SmolLM2-135M on batches of
# 16 × 128 tokens peaked at 6.15 GiB in one pass, 3.03 GiB in slices of 4 and 1.95 GiB in slices of
# 2, and slices of 2 were no slower on 2 CPU cores (0.88x the time; benchmarks/memory.py, README).
DEFAULT_MICRO_BATCH = 2
RECIPE_DEST = "recipe_"


@dataclass
class TrainingRecipe:
    """How θ0 is trained on a set of examples (see the module docstring)."""

    method: str = help_field(f"training method: {' | '.join(METHODS)} (full finetuning)", LORA)
    lora_rank: int = help_field("LoRA rank r", 16)
    lora_alpha: float = help_field("LoRA scaling alpha (update scaled by alpha / r)", 32.0)
    lora_dropout: float = help_field("dropout on the LoRA input, in [0, 1)", 0.05)
    target_modules: tuple[str, ...] = help_field(
        f"LoRA target modules, comma-separated: {ALL_LINEAR!r} (every attention and MLP projection), "
        f"{HEAD!r} (the output head), or module names such as q_proj", DEFAULT_TARGET_MODULES
    )
    lora_layers: int = help_field(
        "adapt only the target modules of the top N transformer blocks (and the head); 0: every block", 0
    )
    learning_rate: float = help_field("AdamW peak learning rate", 2e-4)
    scheduler: str = help_field(f"learning-rate schedule after warm-up: {' | '.join(SCHEDULERS)}", "linear")
    warmup_ratio: float = help_field("fraction of optimizer steps spent warming up, in [0, 1)", 0.0)
    batch_size: int = help_field("examples per forward pass (per device)", 16)
    gradient_accumulation: int = help_field("forward passes per optimizer step", 1)
    micro_batch_size: int = help_field(
        "split each batch into forward/backward passes of this many examples, summed into the same "
        "update (0: the whole batch at once); lowers activation memory, not the result (up to float "
        "summation order and LoRA dropout's masks, drawn per pass)", DEFAULT_MICRO_BATCH
    )
    gradient_checkpointing: bool = help_field(
        "recompute activations in the backward pass instead of keeping them (less memory, ~30% slower)", False
    )
    epochs: int = help_field("passes over the training examples (at most)", 1)
    max_length: int = help_field(
        "tokens per example; longer contexts are cut from the left, passages from the right", 128
    )
    weight_decay: float = help_field("AdamW decoupled weight decay", 0.0)
    max_grad_norm: float = help_field("gradient clipping norm (0 turns clipping off)", 1.0)
    seed: int = help_field("seed of LoRA init, validation split, shuffling and dropout", 0)
    validation_fraction: float = help_field(
        f"share of the given examples held out for validation, in [0, {MAX_VALIDATION_FRACTION}] (0: none)", 0.1
    )
    patience: int = help_field(
        "stop after this many epochs without a better stop_on signal (0: never stop early)", 2
    )
    mixed_precision: str = help_field(
        f"Accelerate mixed precision: {' | '.join(MIXED_PRECISION)} ({AUTO}: bf16 where the CPU or GPU computes it "
        "natively, else no; stored resolved; training/precision.py)", AUTO
    )
    stop_on: str = help_field(
        f"what picks the kept epoch and stops training: {' | '.join(STOP_SIGNALS)} (the teacher signals "
        "compare with θf: teacher_* on held-out, unselected pool documents, task_kl / task_agreement on "
        "unlabelled texts of the task's training split; task_loss, for language modelling, is the loss on "
        "those texts; training/probes.py)", VALIDATION_LOSS
    )
    monitor_size: int = help_field("documents the teacher signals are measured on", 256)
    monitor_source: str = help_field(
        f"where a task_* signal's monitor texts come from: {' | '.join(MONITOR_SOURCES)} ({TASK_MONITOR}: unlabelled "
        "texts of the task's training split; finetuned / base / contrast: texts sampled after the task's prompt "
        "prefix from θf with label words banned, from θ0, or from their contrast: the weights alone; "
        "features/generation.py)", TASK_MONITOR
    )
    class_balance: str = help_field(
        f"classification only: {' | '.join(CLASS_BALANCE)} ({BALANCED}: every label present gets the same "
        "total weight, so a pool whose pseudo-labels are mostly one class does not teach that class's prior)",
        NO_BALANCE,
    )

    batch_order: str = help_field(
        f"how an epoch's examples become batches: {SHUFFLED} (a seeded permutation cut in order) | "
        f"{BUCKETED} (the same permutation, sorted by length within windows of a few batches, then the "
        "batches shuffled: far less padding, other batch compositions; training/batching.py)", BUCKETED
    )
    dropout_sampler: str = help_field(
        f"how LoRA dropout masks are drawn: {TORCH_DROPOUT} (torch's Bernoulli sampler, PEFT's default) | "
        f"{FAST_DROPOUT} (15 random bits per element against a threshold: the same distribution up to "
        "p rounded to 2^-15, about 2x cheaper on a CPU; training/dropout.py)", FAST_DROPOUT
    )
    prefix_cache: bool = help_field(
        "with lora_layers > 0: compute the hidden states entering the lowest adapted block once per example "
        "and train through the top blocks only (the same losses and gradients up to float rounding; needs a "
        "model without dropout below those blocks; training/prefix_cache.py)", False
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = parse_modules(self.target_modules)
        elif isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        check_choice("method", self.method, METHODS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.mixed_precision is False:  # type: ignore[comparison-overlap]  # YAML 1.1 reads an unquoted `no` as false
            self.mixed_precision = "no"
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        self.mixed_precision = resolve_precision(self.mixed_precision)
        check_choice("stop_on", self.stop_on, STOP_SIGNALS)
        check_choice("class_balance", self.class_balance, CLASS_BALANCE)
        check_choice("monitor_source", self.monitor_source, MONITOR_SOURCES)
        if self.monitor_source != TASK_MONITOR and self.stop_on not in TASK_SIGNALS:
            raise ConfigError("monitor_source", self.monitor_source, f"{TASK_MONITOR} with stop_on {self.stop_on} "
                              f"(sampled monitor texts serve the task signals: {', '.join(TASK_SIGNALS)})")
        check_choice("batch_order", self.batch_order, BATCH_ORDERS)
        check_choice("dropout_sampler", self.dropout_sampler, DROPOUT_SAMPLERS)
        check_int("monitor_size", self.monitor_size, minimum=1)
        check_int("lora_layers", self.lora_layers, minimum=0)
        if self.lora_layers and self.method != LORA:
            raise ConfigError("lora_layers", self.lora_layers, f"0 with method={self.method!r} (it selects LoRA blocks)")
        check_int("micro_batch_size", self.micro_batch_size, minimum=0)
        for name in ("gradient_checkpointing", "prefix_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "true or false")
        if self.prefix_cache and not self.lora_layers:
            raise ConfigError("prefix_cache", self.prefix_cache, "false, or lora_layers > 0 (the frozen prefix is "
                              "the blocks below the adapted ones)")
        for name in ("lora_rank", "batch_size", "gradient_accumulation", "epochs"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("max_length", self.max_length, minimum=MIN_MAX_LENGTH)
        check_int("seed", self.seed, minimum=0)
        check_int("patience", self.patience, minimum=0)
        check_number("lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_number("lora_dropout", self.lora_dropout, low=0.0, high=1.0, high_open=True)
        check_number("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("max_grad_norm", self.max_grad_norm, low=0.0)
        check_number("validation_fraction", self.validation_fraction, low=0.0, high=MAX_VALIDATION_FRACTION)
        if not isinstance(self.target_modules, tuple) or not self.target_modules or not all(
            isinstance(m, str) and m.strip() and m == m.strip() for m in self.target_modules
        ):
            raise ConfigError("target_modules", self.target_modules,
                              f"a non-empty list of module names, {ALL_LINEAR!r} or {HEAD!r}")
        for name in ("lora_alpha", "learning_rate", "lora_dropout", "warmup_ratio", "weight_decay",
                     "max_grad_norm", "validation_fraction"):
            setattr(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["target_modules"] = list(self.target_modules)
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TrainingRecipe:
        """A recipe from a mapping of field values; unknown keys are an error, missing keys default."""
        if not isinstance(record, dict):
            raise ConfigError("recipe", record, "a JSON object mapping recipe fields to values")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in record:
            if key not in known:
                raise ConfigError(str(key), record[key], f"a recipe field: {', '.join(known)}")
        return cls(**record)

    @classmethod
    def from_json(cls, text: str) -> TrainingRecipe:
        record = parse_json("recipe", text)
        if isinstance(record, dict):  # a saved recipe without these fields trained on the old path
            record = {**OLD_TRAINING_PATH, **record}
        return cls.from_dict(record)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> TrainingRecipe:
        """A recipe from string values (``--model_args lora_rank=8,...``), each converted by field type."""
        record = {}
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # already a string (postponed annotations)
        for key, value in options.items():
            if key not in types:
                raise ConfigError(key, value, f"a recipe field: {', '.join(types)}")
            record[key] = _convert(key, types[key], value)
        return cls(**record)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainingRecipe:
        """A recipe from a JSON file; a missing, unreadable or non-UTF-8 file is a ConfigError."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError("recipe", str(path), f"a readable UTF-8 recipe.json file ({exc})") from None
        return cls.from_json(text)

    @property
    def splits_batches(self) -> bool:
        """True when a batch runs as several forward/backward passes (``micro_batch_size`` below
        ``batch_size``); otherwise every batch is one pass, whatever ``micro_batch_size`` says."""
        return 0 < self.micro_batch_size < self.batch_size

    @property
    def uses_teacher(self) -> bool:
        """True when training stops on a teacher signal (it then needs θf and monitor texts)."""
        return self.stop_on in TEACHER_SIGNALS

    @property
    def uses_probe(self) -> bool:
        """True when training stops on a probe measured on monitor texts, not the validation loss."""
        return self.stop_on in PROBE_SIGNALS

    def recipe_hash(self) -> str:
        """A short content hash of every field that matters: equal hashes mean equal recipes
        (``monitor_size`` matters only under a teacher signal; see ``LATER_FIELDS``)."""
        record = self.to_dict()
        if not self.splits_batches:
            record["micro_batch_size"] = 0  # no batch is ever split: one pass, the same computation
        if not self.uses_probe:
            record.pop("monitor_size")
        for name, old in LATER_FIELDS.items():
            if record.get(name, old) == old:
                record.pop(name, None)
        return record_key(RECIPE_KIND, record, separators=(",", ":"))


def parse_modules(text: str) -> tuple[str, ...]:
    """``"all-linear,head"`` → ``("all-linear", "head")``."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per recipe field (``lora_rank`` → ``--lora-rank``), help from the field metadata;
    the values stay strings until ``recipe_from_args`` converts them (named errors, not argparse's)."""
    add_field_arguments(parser.add_argument_group("training recipe"), TrainingRecipe, dest_prefix=RECIPE_DEST,
                        as_strings=True)


def recipe_from_args(args: argparse.Namespace, base: TrainingRecipe | None = None) -> TrainingRecipe:
    """The recipe of parsed ``add_recipe_arguments`` flags, starting from ``base`` (or the defaults)."""
    given = {k: v for k, v in field_values(args, TrainingRecipe, dest_prefix=RECIPE_DEST).items() if v is not None}
    return TrainingRecipe.from_options({**(base or TrainingRecipe()).to_dict(), **given})


def _convert(name: str, kind: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(name, value, f"a number ({kind})") from None
    if kind.startswith("tuple"):
        return parse_modules(text)
    if kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(name, value, "true or false")
    return text
