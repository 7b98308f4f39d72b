"""What a feature extraction computes: ``FeatureConfig``, validated, with a JSON round trip.

This module imports neither torch nor the extraction code, so the command line builds the
``features`` flags from these fields at start without loading a model stack.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from lm_eval_approx.config_checks import (
    MIN_MAX_LENGTH,
    check_choice,
    check_int,
    check_text,
    help_field,
)
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.models.devices import DTYPES, check_device
from lm_eval_approx.models.parameter_sets import (
    HEAD,
    HEAD_LABELS,
    check_params,
    explicit_layers,
)
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

DEFAULT_DIM = 4096
DEFAULT_MAX_LENGTH = 256
# The kinds of ``projection.PROJECTORS``, named here so that configs need not import torch.
PROJECTIONS = ("kronecker", "dense", "identity")

LABEL_SOURCES = ("pseudo", "true")

SQNORM_KINDS = ("auto", "exact", "projected")


@dataclass
class FeatureConfig:
    """What to extract: models, task, parameter set, projection and batching."""

    base: str = help_field("θ0: model folder, hub id, .gguf file or alias (smollm2-135m)", "")
    finetuned: str = help_field("θf: a full model or a PEFT adapter folder", "")
    task: str = help_field("approximation task (approx_agnews, approx_msmarco, ...)", "approx_agnews")
    params: str = help_field("'head', 'changed', 'head_labels' (classification: the exact head gradient of the "
                        "loss restricted to the C label tokens, d = C·H, projection and dim unused) or a "
                        "comma-separated list of linear-layer names", HEAD)
    dim: int = help_field("total projected dimension d, split over the layers", DEFAULT_DIM)
    projection: str = help_field("kronecker, dense (oracle) or identity (no projection)", "kronecker",
                                 choices=PROJECTIONS)
    seed: int = help_field("seed of the projection matrices", 0)
    checkpoints: int = help_field("M synthetic checkpoints α = j/M, j = 1..M (1: θf only)", 1)
    checkpoint: int | None = help_field("build only checkpoint j of the M (α = j/M); None: all M", None)
    labels: str = help_field("'pseudo' (θf's argmax) or 'true' (the corpus labels)", "pseudo", choices=LABEL_SOURCES)
    batch_size: int = help_field("examples per forward pass", 16)
    max_length: int = help_field("tokens per example (contexts are clipped on the left)", DEFAULT_MAX_LENGTH)
    sqnorm: str = help_field("‖g‖² per example: exact (factored identity, costs ~T(in+out)/(in·out) of a "
                        "layer's forward), projected (‖Pg‖²), or auto (exact for head, projected otherwise)", "auto",
                        choices=SQNORM_KINDS)
    corpus: str = help_field("corpus spec of the candidates (e.g. seed:wikitext2+seed:dbpedia), recorded in the "
                        "store so `select` can reload their texts ('' when the caller keeps the corpus itself)", "")
    corpus_limit: int | None = help_field("draw this many documents of that corpus (None: all)", None)
    corpus_seed: int = help_field("seed of the corpus_limit draw", 0)
    dtype: str = help_field("model dtype while extracting", "float32")
    device: str = help_field("cpu or cuda (each process takes cuda:LOCAL_RANK)", "cpu")
    add_bos_token: bool | None = help_field("lm-eval HFLM's add_bos_token the examples are encoded with "
                                            "(None: HFLM's default)", None)

    def __post_init__(self) -> None:
        for name in ("base", "finetuned"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(name, getattr(self, name), "a model name or path")
        try:
            spec = get_task_spec(check_text("task", self.task, "an approximation task name"))
        except UnknownNameError as exc:
            raise ConfigError("task", self.task, str(exc).split(": ", 1)[-1]) from None
        check_params(self.params)
        for name, low in (("dim", 1), ("checkpoints", 1), ("batch_size", 1), ("max_length", MIN_MAX_LENGTH),
                          ("seed", 0)):
            check_int(name, getattr(self, name), minimum=low)
        for name, accepted in (("projection", PROJECTIONS), ("labels", LABEL_SOURCES), ("dtype", DTYPES),
                               ("sqnorm", SQNORM_KINDS)):
            check_choice(name, getattr(self, name), accepted)
        check_int("checkpoint", self.checkpoint, 1, self.checkpoints, optional=True,
                  accepted=f"None or an integer in 1..{self.checkpoints} (checkpoints)")
        check_device("device", self.device)
        if self.params == HEAD_LABELS:
            check_label_task(spec)
        if self.add_bos_token is not None and not isinstance(self.add_bos_token, bool):
            raise ConfigError("add_bos_token", self.add_bos_token, "true, false or None")

    @property
    def alphas(self) -> list[float]:
        if self.checkpoint is not None:
            return [self.checkpoint / self.checkpoints]
        return [j / self.checkpoints for j in range(1, self.checkpoints + 1)]

    @property
    def param_names(self) -> list[str] | None:
        """The explicit layer list, or None for 'head' / 'changed' / 'head_labels'."""
        return explicit_layers(self.params)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"FeatureConfig.{key}", data[key], f"fields: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        return cls.from_dict(json.loads(text))


def check_label_task(spec: TaskSpec) -> None:
    """Raise ConfigError unless ``spec`` is a classification task (the only kind with label tokens)."""
    if spec.kind != CLASSIFICATION:
        raise ConfigError("params", HEAD_LABELS, f"a classification task (task {spec.name!r} is language "
                          "modelling, it has no label tokens: use params=head or changed)")
