"""lm-eval model type ``approx``: θ0 retrained on the documents a strategy selected for θf.

``--model approx --model_args base=B,finetuned=F,strategy=S,k=K,corpus=C,task=T,seed=N,...``
runs the cached pipeline (pipeline.py) when the model is built, then evaluates θ0 + the trained
adapter exactly like ``hf`` (with FastHFLM's one-forward-per-context scoring). Keys:

- every ``ApproxConfig`` field (base, finetuned, task, corpus, corpus_size, strategy, k, seed,
  params, dim, projection, checkpoints, extract_batch_size, extract_max_length, ...);
- ``train_<field>`` for every ``TrainingRecipe`` field (train_epochs=2, train_learning_rate=2e-4;
  ``train_target_modules`` joins module names with ``+``, as ``params`` joins layer names: commas
  already separate ``--model_args``);
- ``strategy_<option>`` for the strategy's own options (strategy_batch_size=16, strategy_min_cosine=0.1);
- ``recipe=FILE`` to read a recipe JSON (train_* keys override it); without it the recipe starts
  from the retraining rule for the task's kind (``training/retraining_rule.py``: up to 8 epochs,
  keeping the epoch that agrees best with θf on the task's unlabelled training texts);
- ``allow_pickle=true`` to accept θ0/θf folders that hold only pickle checkpoints (read with
  ``weights_only=True``; refused otherwise, see safe_weights.py);
- anything else goes to HFLM (batch_size, device, dtype, max_length, ...) if HFLM or
  ``from_pretrained`` takes it (``harness/model_args.py``); any other key is an
  ``UnknownModelArgError`` before any compute. ``trust_remote_code`` is False unless given;
  ``add_bos_token`` goes to HFLM and to every encoding of the pipeline alike, as a boolean, and
  ``device`` (lm-eval's ``--device``) to HFLM and to the pipeline's models (``ApproxConfig.device``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.harness.fast_hflm import FastHFLM
from lm_eval_approx.harness.model_args import check_hf_args
from lm_eval_approx.harness.tied_head import install as install_tied_head_fix
from lm_eval_approx.models.loading import resolve_model
from lm_eval_approx.models.safe_weights import (
    ALLOW_PICKLE_ARG,
    hf_model_args,
    parse_flag,
    pickle_allowed,
)
from lm_eval_approx.pipeline import ApproxConfig, ApproxResult, run_approximation
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.retraining_rule import rule_for_task

TRAIN_PREFIX = "train_"
STRATEGY_PREFIX = "strategy_"


def split_model_args(kwargs: dict[str, Any]) -> tuple[ApproxConfig, TrainingRecipe, dict[str, Any]]:
    """Split ``--model_args`` into the pipeline config (resolved: its task loaded, its strategy
    found), the training recipe and HFLM's own args."""
    config_fields = {f.name for f in dataclasses.fields(ApproxConfig)} - {"strategy_options", "add_bos_token", "device"}
    recipe_fields = {f.name for f in dataclasses.fields(TrainingRecipe)}
    config, recipe, options, rest = dict[str, Any](), {}, {}, {}
    recipe_file = kwargs.pop("recipe", None)
    for key, value in kwargs.items():
        if key in config_fields:
            config[key] = str(value).replace("+", ",") if key == "params" else value
        elif key.startswith(TRAIN_PREFIX):
            name = key[len(TRAIN_PREFIX):]
            if name not in recipe_fields:
                raise ConfigError(key, value, "train_<recipe field>: " + ", ".join(sorted(recipe_fields)))
            recipe[name] = str(value).replace("+", ",") if name == "target_modules" else value
        elif key.startswith(STRATEGY_PREFIX):
            options[key[len(STRATEGY_PREFIX):]] = value
        else:
            rest[key] = value
    for name in ("base", "finetuned"):
        if name not in config:
            raise ConfigError(name, None, f"--model_args {name}=MODEL (required by --model approx)")
    check_hf_args(rest, str(config["base"]), config_fields | {"recipe", ALLOW_PICKLE_ARG})
    if "add_bos_token" in rest:  # HFLM's own argument: the pipeline must encode as HFLM will score
        config["add_bos_token"] = rest["add_bos_token"] = _as_bool("add_bos_token", rest["add_bos_token"])
    if "device" in rest:  # HFLM's too (lm-eval's --device, a leaderboard's device): the pipeline runs there
        config["device"] = rest["device"]
    approx = ApproxConfig(**config, strategy_options=options).resolve()  # the task and strategy, before any compute
    base_recipe = TrainingRecipe.load(recipe_file).to_dict() if recipe_file else rule_for_task(approx.task_spec)
    if "target_modules" in base_recipe:
        base_recipe["target_modules"] = ",".join(base_recipe["target_modules"])
    return approx, TrainingRecipe.from_options({**base_recipe, **recipe}), rest


def _as_bool(name: str, value: Any) -> bool | None:
    """A model-arg boolean as lm-eval writes it (True/False, true/false) or None."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    if text == "none":
        return None
    raise ConfigError(name, value, "True or False")


class ApproxLM(FastHFLM):
    """θ0 + the adapter trained on a strategy's selection, scored like ``hf``."""

    def __init__(self, **kwargs: Any) -> None:
        if "pretrained" in kwargs or "peft" in kwargs:
            raise ConfigError("pretrained/peft", kwargs.get("pretrained") or kwargs.get("peft"),
                              "base=... and finetuned=... (approx builds its own adapter)")
        kwargs = dict(kwargs)
        allow_pickle = parse_flag(ALLOW_PICKLE_ARG, kwargs.pop(ALLOW_PICKLE_ARG, False))
        config, recipe, hf_args = split_model_args(kwargs)
        start = time.perf_counter()
        self.approx_config, self.approx_recipe = config, recipe
        with pickle_allowed(allow_pickle):
            self.approx_result: ApproxResult = run_approximation(config, recipe)
            self.approx_seconds = time.perf_counter() - start
            install_tied_head_fix()
            super().__init__(**hf_model_args({"pretrained": resolve_model(config.base),
                                              "peft": str(self.approx_result.adapter), **hf_args}))

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["approx"] = {
            **{k: v for k, v in self.approx_config.to_dict().items()},
            "recipe": self.approx_recipe.to_dict(),
            "adapter": str(self.approx_result.adapter),
            "selection_file": str(self.approx_result.selection),
            "pipeline_seconds": round(self.approx_seconds, 3),
            **self.approx_result.info(),
        }
        return info
