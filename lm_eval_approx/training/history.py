"""What a training run did, epoch by epoch: the one record behind ``training.json``, ``curves.json``
and the resume checkpoint's history.

The JSON field names are the ones every record on disk already has, so a finished training of any
earlier version reads back: a field a record lacks (it was written before the field existed) reads
as its default, and the fields ``save_training`` writes beside the history (``RECORD_FIELDS``) are
skipped. No torch here: the leaderboard reads these records without the model stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from lm_eval_approx.config_checks import parse_json
from lm_eval_approx.errors import ConfigError

VALIDATION_LOSS = "validation_loss"
# Where a training's time goes (``phase_seconds``); the probes keep their own ``probe_seconds``.
PHASES = ("render", "forward", "backward", "optimizer", "validation")
PREFIX_PHASE = "prefix"  # a run with the frozen-prefix cache: its states' one forward per example
# What ``save_training`` writes beside the history in training.json: what was trained, not how it went.
RECORD_FIELDS = ("base", "task", "selection_hash", "recipe_hash", "method")
# Left out of the JSON while unset, as they always were: ``best_signal`` is measured only when a probe
# picks the epoch, ``examples_per_second`` once the run has ended, and the phase and token counts
# did not exist in older records; ``seconds_at_resume`` exists only for a run that resumed.
OMITTED_WHILE_UNSET = ("best_signal", "examples_per_second", "phase_seconds", "tokens", "seconds_at_resume")


@dataclass
class TrainingHistory:
    """One training run's curves, choice of epoch and costs (epoch 0 is θ0, before any step)."""

    key: str = ""  # training_key of the inputs: a checkpoint of other inputs is not resumed
    n_train: int = 0
    n_validation: int = 0
    stop_on: str = VALIDATION_LOSS  # older records stopped on the validation loss
    epochs_run: int = 0
    train_loss: list[float] = field(default_factory=list)  # mean batch loss, per epoch
    validation_loss: list[float] = field(default_factory=list)  # after each epoch
    initial_validation_loss: float | None = None  # at θ0 (None: no validation examples)
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"epoch", "loss", "lr"} per batch
    best_epoch: int | None = None  # the kept epoch (0: θ0 itself)
    best_validation_loss: float | None = None
    best_signal: float | None = None  # the stop_on probe's value at the kept epoch
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    train_seconds: float = 0.0
    examples_seen: int = 0
    examples_per_second: float | None = None
    probes: dict[str, list[float]] = field(default_factory=dict)  # name → value at θ0, then per epoch
    probe_seconds: float = 0.0
    phase_seconds: dict[str, float] | None = None  # PHASES → seconds
    tokens: dict[str, int] | None = None  # {"real", "padded"}: attended tokens against the batches' area
    # The clocked seconds the checkpoint carried when this run last resumed: the stage that ran the
    # training timed only the attempt that finished, so a cell's cost adds these back.
    seconds_at_resume: float | None = None

    @classmethod
    def start(cls, key: str, n_train: int, n_validation: int, stop_on: str) -> TrainingHistory:
        """The history of a run that has not trained yet, its clocks and token counts at zero."""
        return cls(key=key, n_train=n_train, n_validation=n_validation, stop_on=stop_on,
                   phase_seconds=dict.fromkeys(PHASES, 0.0), tokens={"real": 0, "padded": 0})

    def count_tokens(self, real: int, padded: int) -> None:
        self.tokens["real"] += real  # type: ignore[index]  # start() and resumed() set the counters
        self.tokens["padded"] += padded  # type: ignore[index]

    @classmethod
    def resumed(cls, record: dict[str, Any]) -> TrainingHistory:
        """The history of a checkpoint, going on from its last epoch (the counters a checkpoint of
        an older version lacks start at zero)."""
        history = cls.from_dict(record)
        history.phase_seconds = history.phase_seconds or dict.fromkeys(PHASES, 0.0)
        history.tokens = history.tokens or {"real": 0, "padded": 0}
        history.resumed_from_epoch = history.epochs_run
        history.seconds_at_resume = history.clocked_seconds()
        return history

    def clocked_seconds(self) -> float:
        """The training work this history timed, across every attempt that reached a checkpoint:
        the epochs' steps, the probes, and the render, validation and prefix phases (the steps'
        forward, backward and optimizer phases lie inside ``train_seconds``). Model loading and the
        work an interrupted attempt did after its last checkpoint are not in it."""
        phases = self.phase_seconds or {}
        return (self.train_seconds + self.probe_seconds
                + sum(phases.get(name, 0.0) for name in ("render", "validation", PREFIX_PHASE)))

    def curves(self) -> dict[str, Any]:
        """What ``curves.json`` holds: the loss curves, every step and the probes."""
        return {"train_loss": self.train_loss, "validation_loss": self.validation_loss,
                "initial_validation_loss": self.initial_validation_loss, "steps": self.steps,
                "probes": self.probes}

    def to_dict(self, steps: bool = True) -> dict[str, Any]:
        """The record as plain values (the checkpoint's form; ``steps=False``: training.json's)."""
        record = dataclasses.asdict(self)
        for name in OMITTED_WHILE_UNSET:
            if record[name] is None:
                del record[name]
        if not steps:
            del record["steps"]
        return record

    def to_json(self, steps: bool = True) -> str:
        return json.dumps(self.to_dict(steps), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TrainingHistory:
        """A history from a record of any version: training.json (its ``RECORD_FIELDS`` skipped), a
        checkpoint's history, or ``to_dict``; a name that is none of these is a ConfigError."""
        if not isinstance(record, dict):
            raise ConfigError("training record", record, "a JSON object of training history fields")
        known = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for name, value in record.items():
            if name in RECORD_FIELDS:
                continue
            if name not in known:
                raise ConfigError(f"training record field {name!r}", value,
                                  f"a training history field: {', '.join(known + list(RECORD_FIELDS))}")
            values[name] = value
        history = cls(**values)
        if history.stop_on is None:  # a record that wrote stop_on as null stopped on the validation loss
            history.stop_on = VALIDATION_LOSS
        return history

    @classmethod
    def from_json(cls, text: str) -> TrainingHistory:
        record = parse_json("training record", text)
        return cls.from_dict(record)


@contextlib.contextmanager
def timed(clock: dict[str, float], phase: str):
    """Add the seconds spent inside the block to ``clock[phase]`` (a history's ``phase_seconds``)."""
    began = time.perf_counter()
    try:
        yield
    finally:
        clock[phase] = clock.get(phase, 0.0) + time.perf_counter() - began
