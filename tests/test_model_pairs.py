"""Model pairs SELECT cannot approximate fail in seconds with ModelPairError, before any long compute.

Each case is built from the conftest tiny models: another architecture (GPT-2 vs Llama), another
vocabulary, a PEFT adapter with PEFT's default zero B (θf = θ0), an adapter recorded on another
base, and θf = θ0 as a full model. Good pairs (a trained adapter, a changed full model) pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, save_tiny_model, train_tiny_tokenizer
from lm_eval_approx.models.pairs import adapter_changed_modules, check_model_pair, first_difference
from lm_eval_approx.errors import ConfigError, ModelPairError, UnknownNameError

OTHER_VOCAB = 320


def _adapter(base: str, out: Path, train_b: bool, targets=("c_attn", "lm_head")) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=list(targets), task_type="CAUSAL_LM"))
    if train_b:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name and "c_attn" in name:
                    param.normal_()
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def pairs(tiny_gpt2, tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("pairs")
    other_vocab = root / "gpt2-other-vocab"
    tokenizer = train_tiny_tokenizer(OTHER_VOCAB)
    build_tiny_model("gpt2", len(tokenizer)).save_pretrained(other_vocab)
    tokenizer.save_pretrained(other_vocab)
    same_size = root / "gpt2-other-tokens"
    build_tiny_model("gpt2", 384, seed=0).save_pretrained(same_size)
    swapped = train_tiny_tokenizer()
    vocab = swapped.get_vocab()
    a, b = sorted(vocab)[10:12]
    raw = json.loads(swapped.backend_tokenizer.to_str())
    raw["model"]["vocab"][a], raw["model"]["vocab"][b] = vocab[b], vocab[a]
    (same_size / "tokenizer.json").write_text(json.dumps(raw))
    (same_size / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    other_base = save_tiny_model(root / "gpt2-seed1", "gpt2", seed=1)
    changed = root / "gpt2-changed-head"
    model = build_tiny_model("gpt2", 384)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)
    model.save_pretrained(changed)
    return {
        "other_vocab": str(other_vocab), "other_tokens": str(same_size), "other_base": other_base,
        "changed": str(changed),
        "zero_adapter": _adapter(tiny_gpt2, root / "zero-adapter", train_b=False),
        "trained_adapter": _adapter(tiny_gpt2, root / "trained-adapter", train_b=True),
        "foreign_adapter": _adapter(other_base, root / "foreign-adapter", train_b=True),
    }


def test_different_architecture(tiny_gpt2, tiny_llama):
    with pytest.raises(ModelPairError, match="model_type.*gpt2.*llama") as info:
        check_model_pair(tiny_gpt2, tiny_llama)
    assert info.value.base == tiny_gpt2 and info.value.finetuned == tiny_llama


def test_different_vocabulary(tiny_gpt2, pairs):
    with pytest.raises(ModelPairError, match="vocab_size.*384.*320"):
        check_model_pair(tiny_gpt2, pairs["other_vocab"])


def test_same_size_tokenizer_with_other_ids(tiny_gpt2, pairs):
    with pytest.raises(ModelPairError, match="token→id map"):
        check_model_pair(tiny_gpt2, pairs["other_tokens"])


def test_identical_full_model_on_chosen_parameters(tiny_gpt2, pairs):
    for params in ("head", "changed", "transformer.h.0.attn.c_attn"):
        with pytest.raises(ModelPairError, match=f"params={params}.*zero"):
            check_model_pair(tiny_gpt2, tiny_gpt2, params)
    check_model_pair(tiny_gpt2, tiny_gpt2)  # no parameter set chosen: nothing to be zero on
    check_model_pair(tiny_gpt2, pairs["changed"], "head")
    with pytest.raises(ModelPairError, match="params=transformer.h.0.attn.c_attn"):
        check_model_pair(tiny_gpt2, pairs["changed"], "transformer.h.0.attn.c_attn")


def test_adapter_with_default_zero_b(tiny_gpt2, pairs):
    for params in ("head", "changed"):
        with pytest.raises(ModelPairError, match="LoRA B·A on them is zero"):
            check_model_pair(tiny_gpt2, pairs["zero_adapter"], params)


def test_trained_adapter_passes_only_where_it_changed(tiny_gpt2, pairs):
    check_model_pair(tiny_gpt2, pairs["trained_adapter"], "changed")
    check_model_pair(tiny_gpt2, pairs["trained_adapter"], "transformer.h.1.attn.c_attn")
    with pytest.raises(ModelPairError, match="params=head"):
        check_model_pair(tiny_gpt2, pairs["trained_adapter"], "head")


def test_adapter_on_another_base(tiny_gpt2, pairs):
    with pytest.raises(ModelPairError, match="base_model_name_or_path.*made for"):
        check_model_pair(tiny_gpt2, pairs["foreign_adapter"])
    check_model_pair(pairs["other_base"], pairs["foreign_adapter"], "changed")


def test_adapter_whose_base_is_gone_or_unrecorded(tiny_gpt2, pairs, tmp_path):
    for recorded in (str(tmp_path / "moved-away"), None):
        adapter = tmp_path / f"adapter-{recorded is None}"
        adapter.mkdir()
        config = json.loads((Path(pairs["zero_adapter"]) / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = recorded
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        with pytest.raises(ModelPairError, match="base_model_name_or_path"):
            check_model_pair(tiny_gpt2, str(adapter))


def test_adapter_as_base_and_unknown_layer_are_named(tiny_gpt2, pairs):
    with pytest.raises(ConfigError, match="base"):
        check_model_pair(pairs["trained_adapter"], tiny_gpt2)
    with pytest.raises(UnknownNameError, match="no_such_layer"):
        check_model_pair(tiny_gpt2, pairs["changed"], "no_such_layer")


def test_adapter_scan_matches_materialised_lora_updates(tiny_gpt2, pairs):
    """Slow twin: load each adapter with PEFT and look at B @ A of every LoRA layer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lm_eval_approx.models.layers import canonical_name

    for key in ("zero_adapter", "trained_adapter"):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), pairs[key])
        slow = set()
        for name, module in model.named_modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
                if bool(delta.any()):
                    slow.add(canonical_name(name))
        assert adapter_changed_modules(Path(pairs[key])) == slow


def test_first_difference_matches_a_full_comparison(tiny_gpt2, pairs):
    from safetensors.torch import load_file

    for other in (tiny_gpt2, pairs["changed"], pairs["other_base"]):
        a = load_file(str(Path(tiny_gpt2) / "model.safetensors"))
        b = load_file(str(Path(other) / "model.safetensors"))
        slow = sorted(k for k in a if not torch.equal(a[k], b[k]))
        fast = first_difference(Path(tiny_gpt2), Path(other))
        assert fast == (slow[0] if slow else False)


def test_pipeline_checks_the_pair_before_any_stage(tiny_gpt2, tiny_llama, monkeypatch):
    from lm_eval_approx import pipeline
    from lm_eval_approx.training.recipe import TrainingRecipe

    def no_compute(*args, **kwargs):
        raise AssertionError("a stage ran before the model pair was checked")

    monkeypatch.setattr(pipeline, "load_corpus", no_compute)
    monkeypatch.setattr(pipeline, "run_stage", no_compute)
    config = pipeline.ApproxConfig(base=tiny_gpt2, finetuned=tiny_llama, corpus="seed:wikitext2", k=2)
    with pytest.raises(ModelPairError, match="model_type"):
        pipeline.run_approximation(config, TrainingRecipe())
    config = pipeline.ApproxConfig(base=tiny_gpt2, finetuned=tiny_gpt2, corpus="seed:wikitext2", k=2)
    with pytest.raises(ModelPairError, match="params=head"):
        pipeline.run_approximation(config, TrainingRecipe())


def test_features_command_checks_the_pair(tiny_gpt2, tiny_llama, tmp_path, capsys):
    from lm_eval_approx.cli import main

    code = main(["features", "--base", tiny_gpt2, "--finetuned", tiny_llama, "--task", "approx_agnews",
                 "--corpus", "seed:wikitext2", "--out", str(tmp_path / "f")])
    assert code == 2 and "model_type" in capsys.readouterr().err
