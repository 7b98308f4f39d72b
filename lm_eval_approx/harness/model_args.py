"""Which ``--model_args`` keys ``--model approx`` passes on to HFLM, checked before any compute.

HFLM hands every key it does not name to ``from_pretrained``, which hands the keys it does not
know either to the model's config (a field of θ0's config overrides it) or to the model class's
``__init__``, where an unknown key fails as a bare TypeError — after the whole pipeline has run.
So a key left over once the approx keys are taken (``harness/approx_model.py``) must be one of:

- an argument of HFLM or FastHFLM (batch_size, device, dtype, max_length, add_bos_token, ...);
- a keyword of ``from_pretrained`` (its signature, and the ones it reads from ``**kwargs``:
  attn_implementation, device_map, quantization_config, load_in_4bit, ...);
- a field of θ0's config (use_cache, sliding_window, ...), which ``from_pretrained`` overrides.

Anything else is an ``UnknownModelArgError`` that lists the accepted keys; an lm-eval command-line
flag written as a model argument (include_path, tasks, ...) is named as such.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable

from lm_eval_approx.errors import ApproxError, ConfigError

# Keywords that transformers' from_pretrained reads from **kwargs (4.45 to 5.x) or that HFLM
# forwards there itself; its named parameters come from its signature.
FROM_PRETRAINED_KWARGS = frozenset({
    "attn_implementation", "experts_implementation", "device_map", "max_memory", "offload_folder",
    "offload_state_dict", "offload_buffers", "quantization_config", "load_in_8bit", "load_in_4bit",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "low_cpu_mem_usage",
    "torch_dtype", "variant", "use_flash_attention_2", "output_loading_info", "tp_size", "key_mapping",
    "use_kernels", "kernel_config", "generation_config", "adapter_name", "adapter_kwargs", "proxies",
    "code_revision", "state_dict", "distributed_config", "device_mesh",
})
# lm-eval command-line flags that users sometimes put into --model_args.
LM_EVAL_FLAGS = frozenset({
    "include_path", "tasks", "num_fewshot", "limit", "output_path", "log_samples", "gen_kwargs",
    "apply_chat_template", "fewshot_as_multiturn", "system_instruction", "cache_requests",
    "model", "model_args", "metadata", "predict_only", "samples", "write_out", "verbosity",
})


class UnknownModelArgError(ConfigError):
    """A ``--model_args`` key that neither ``--model approx`` nor HFLM / from_pretrained accepts."""

    def __init__(self, key: str, value: object, approx_keys: Iterable[str], hf_keys: Iterable[str]):
        self.key = key
        self.approx_keys, self.hf_keys = sorted(approx_keys), sorted(hf_keys)
        close = difflib.get_close_matches(key, [*self.approx_keys, *self.hf_keys], n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        if key in LM_EVAL_FLAGS:
            hint = f"{key} is an lm-eval command-line flag (--{key}), not a model argument. " + hint
        accepted = (f"{hint}--model approx accepts {', '.join(self.approx_keys)}; train_<recipe field>; "
                    f"strategy_<option>; and what it passes to HFLM: {', '.join(self.hf_keys)}; "
                    "or a field of θ0's config.json")
        super().__init__(f"--model_args {key}", value, accepted)


def hf_argument_names() -> set[str]:
    """Every key HFLM / FastHFLM / from_pretrained accept by name (``pretrained`` and ``peft`` aside:
    approx sets those itself)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import PreTrainedModel

    from lm_eval_approx.harness.fast_hflm import FastHFLM

    names = set(FROM_PRETRAINED_KWARGS)
    for function in (HFLM.__init__, FastHFLM.__init__, PreTrainedModel.from_pretrained):
        names |= {p.name for p in inspect.signature(function).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names - {"self", "cls", "pretrained", "peft", "pretrained_model_name_or_path", "model_args"}


def config_field_names(base: str) -> set[str]:
    """The fields of θ0's config (``from_pretrained`` overrides them from keyword arguments); empty
    when θ0 cannot be read here (the pipeline then reports that itself)."""
    from transformers import AutoConfig

    from lm_eval_approx.models.loading import resolve_model

    try:
        return set(AutoConfig.from_pretrained(resolve_model(base)).to_dict())
    except (ApproxError, OSError, ValueError, KeyError):
        return set()


def check_hf_args(hf_args: dict, base: str, approx_keys: Iterable[str]) -> None:
    """Raise ``UnknownModelArgError`` for the first key of ``hf_args`` that HFLM would not take."""
    if not hf_args:
        return
    known = hf_argument_names()
    unknown = [key for key in hf_args if key not in known]
    if unknown:
        unknown = [key for key in unknown if key not in config_field_names(base)]
    if unknown:
        raise UnknownModelArgError(unknown[0], hf_args[unknown[0]], approx_keys, known)
