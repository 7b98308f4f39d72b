"""The training recipe: one validated, JSON-serialisable description of how θ0 is trained.

The same recipe produces a benchmark's expert θf (``lm-eval-approx finetune``) and every
retraining on a selection (``lm-eval-approx train``, the ``approx`` model), so the two differ only
in their data. ``recipe_hash()`` names the recipe in caches and in the adapter folder.

Target modules: the tokens ``all-linear`` (every Linear/Conv1D projection of the transformer
blocks: attention and MLP) and ``head`` (the output head, whatever the architecture calls it) are
resolved against the model at training time; any other entry is a module name as PEFT matches it
(``q_proj``, ``c_attn``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.errors import ConfigError

LORA = "lora"
FULL = "full"
METHODS = (LORA, FULL)
ALL_LINEAR = "all-linear"
HEAD = "head"
DEFAULT_TARGET_MODULES = (ALL_LINEAR, HEAD)
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
MIXED_PRECISION = ("no", "bf16", "fp16")
MAX_VALIDATION_FRACTION = 0.5
MIN_MAX_LENGTH = 2
HASH_CHARS = 16


def _field(default, help_text: str, **kwargs):
    return field(default=default, metadata={"help": help_text}, **kwargs)


@dataclass
class TrainingRecipe:
    """How θ0 is trained on a set of examples (see the module docstring)."""

    method: str = _field(LORA, f"training method: {' | '.join(METHODS)} (full finetuning)")
    lora_rank: int = _field(16, "LoRA rank r")
    lora_alpha: float = _field(32.0, "LoRA scaling alpha (update scaled by alpha / r)")
    lora_dropout: float = _field(0.05, "dropout on the LoRA input, in [0, 1)")
    target_modules: tuple[str, ...] = _field(
        DEFAULT_TARGET_MODULES,
        f"LoRA target modules, comma-separated: {ALL_LINEAR!r} (every attention and MLP projection), "
        f"{HEAD!r} (the output head), or module names such as q_proj",
    )
    learning_rate: float = _field(2e-4, "AdamW peak learning rate")
    scheduler: str = _field("linear", f"learning-rate schedule after warm-up: {' | '.join(SCHEDULERS)}")
    warmup_ratio: float = _field(0.0, "fraction of optimizer steps spent warming up, in [0, 1)")
    batch_size: int = _field(16, "examples per forward pass (per device)")
    gradient_accumulation: int = _field(1, "forward passes per optimizer step")
    epochs: int = _field(1, "passes over the training examples (at most)")
    max_length: int = _field(
        128, "tokens per example; longer contexts are cut from the left, passages from the right"
    )
    weight_decay: float = _field(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = _field(1.0, "gradient clipping norm (0 turns clipping off)")
    seed: int = _field(0, "seed of LoRA init, validation split, shuffling and dropout")
    validation_fraction: float = _field(
        0.1,
        f"share of the given examples held out for validation, in [0, {MAX_VALIDATION_FRACTION}] (0: none)",
    )
    patience: int = _field(
        2, "stop after this many epochs without a better validation loss (0: never stop early)"
    )
    mixed_precision: str = _field("no", f"Accelerate mixed precision: {' | '.join(MIXED_PRECISION)}")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = parse_modules(self.target_modules)
        elif isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        _choice("method", self.method, METHODS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in ("lora_rank", "batch_size", "gradient_accumulation", "epochs"):
            _integer(name, getattr(self, name), minimum=1)
        _integer("max_length", self.max_length, minimum=MIN_MAX_LENGTH)
        _integer("seed", self.seed, minimum=0)
        _integer("patience", self.patience, minimum=0)
        _number("lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        _number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _number("lora_dropout", self.lora_dropout, low=0.0, high=1.0, high_open=True)
        _number("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, high_open=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("max_grad_norm", self.max_grad_norm, low=0.0)
        _number("validation_fraction", self.validation_fraction, low=0.0, high=MAX_VALIDATION_FRACTION)
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
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("recipe", text[:80], f"valid JSON ({exc.msg})") from None
        return cls.from_dict(record)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> TrainingRecipe:
        """A recipe from string values (``--model_args lora_rank=8,...``), each converted by field type."""
        record = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
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

    def recipe_hash(self) -> str:
        """A short content hash of every field: equal hashes mean equal recipes."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def parse_modules(text: str) -> tuple[str, ...]:
    """``"all-linear,head"`` → ``("all-linear", "head")``."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per recipe field (``lora_rank`` → ``--lora-rank``), help from the field metadata."""
    group = parser.add_argument_group("training recipe")
    defaults = TrainingRecipe()
    for f in dataclasses.fields(TrainingRecipe):
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f"recipe_{f.name}", default=None, metavar=f.name.upper(),
            help=f"{f.metadata['help']} (default: {shown})",
        )


def recipe_from_args(args: argparse.Namespace, base: TrainingRecipe | None = None) -> TrainingRecipe:
    """The recipe of parsed ``add_recipe_arguments`` flags, starting from ``base`` (or the defaults)."""
    record = (base or TrainingRecipe()).to_dict()
    for f in dataclasses.fields(TrainingRecipe):
        value = getattr(args, f"recipe_{f.name}", None)
        if value is not None:
            record[f.name] = value
    return TrainingRecipe.from_options(record)


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
    return text


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(name, value, f"one of {', '.join(accepted)}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, value, f"an integer ≥ {minimum}")


def _number(name: str, value: Any, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(name, value, f"a finite number in {interval}")
