"""Hostile task configs (hypothesis): a generated lm-eval task YAML over a local JSONL, with odd
choices (none, empty, duplicated, all digits, 1,000 of them), prompts that render to nothing, to a
constant, to digits, or name a field the documents lack, a declared text field that is missing, a
target template that needs a label, and data files that do not exist. Every case ends in a spec
that renders each candidate text into a non-empty prompt with distinct, non-empty choices, or in a
named ConfigError; never another exception. Plus one finetune from a task's training split under
the same generator's choice counts, for the 1,000-choice case (labels index into all of them)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks import lm_eval_tasks
from lm_eval_approx.tasks.lm_eval_spec import TaskPromptError
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

SETTINGS = dict(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
CHOICE = st.sampled_from(["yes", "no", "", " ", "7", "42", "yes", "Sci/Tech", "東京", "a b"]) | st.text(max_size=6)
CHOICES = (st.lists(CHOICE, max_size=6)
           | st.integers(0, 1000).map(lambda n: [f"class {i}" for i in range(n)])
           | st.just([str(i) for i in range(1000)]))
PROMPTS = st.sampled_from(["Text: {{text}}\nAnswer:", "{{text}}", "{{ text[:0] }}", "12345", "{{ text|length }}",
                           "{{title}} {{text}}", "{{missing}}", "", "{{text}}{{text}}", "Q: {{ text.upper() }}"])
TARGETS = st.sampled_from(["label", "{{label}}", "{{ ['no', 'yes'][label] }}", "{{ label + 99 }}", "0"])
_names = itertools.count()


def _write_task(root: Path, choices, prompt: str, target: str, text_field, data_exists: bool) -> str:
    name = f"hostile_{next(_names)}"
    rows = [{"text": f"row {i} says {'yes' if i % 2 else 'no'}", "label": i % 2, "title": f"t{i}"} for i in range(6)]
    data = root / f"{name}.jsonl"
    if data_exists:
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"task": name, "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"train": str(data), "test": str(data)}},
              "training_split": "train", "test_split": "test", "output_type": "multiple_choice",
              "doc_to_text": prompt, "doc_to_choice": choices, "doc_to_target": target,
              "metric_list": [{"metric": "acc"}], "metadata": {"version": 1.0}}
    if text_field is not None:
        config["metadata"]["approx"] = {"text_field": text_field}
    (root / f"{name}.yaml").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return name


@settings(**SETTINGS)
@given(choices=CHOICES, prompt=PROMPTS, target=TARGETS, text_field=st.none() | st.sampled_from(["text", "body"]),
       data_exists=st.booleans() | st.just(True))
@example(choices=[str(i) for i in range(1000)], prompt="Text: {{text}}\nAnswer:", target="label", text_field=None,
         data_exists=True)
@example(choices=["yes", "no"], prompt="{{ text[:0] }}", target="label", text_field=None, data_exists=True)
@example(choices=["yes", "no"], prompt="12345", target="label", text_field=None, data_exists=True)
@example(choices=["yes", "no"], prompt="Text: {{text}}", target="label", text_field="body", data_exists=True)
@example(choices=["yes", "no"], prompt="Text: {{text}}", target="label", text_field=None, data_exists=False)
@example(choices=["yes", "yes"], prompt="Text: {{text}}", target="label", text_field=None, data_exists=True)
def test_generated_task_configs_give_a_spec_or_a_named_error(choices, prompt, target, text_field, data_exists):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        name = _write_task(root, choices, prompt, target, text_field, data_exists)
        try:
            # A YAML lm-eval cannot parse is left out of its index: then the name is unknown (a named
            # error tested in test_task_specs.py, which would build lm-eval's whole index here).
            if name not in lm_eval_tasks.local_task_names([str(root)])[0]:
                return
            spec = get_task_spec(name, include_path=[str(root)])
        except ConfigError as exc:
            assert exc.field and exc.accepted and str(exc).strip()
            return
        finally:
            lm_eval_tasks.reset_task_caches()
        assert spec.num_classes == len(choices) >= 1
        assert len(set(spec.choices)) == len(spec.choices) and all(c.strip() for c in spec.choices)
        for text in ("hello world", "12345"):
            try:
                context = spec.context(text)
            except TaskPromptError as exc:
                # lm-eval turns an all-digit multiple-choice prompt into an int and cannot score it
                # either; the candidate is refused by name rather than rendered wrong.
                assert text.isdigit() and exc.field == "text" and "renders" in exc.accepted
                continue
            assert isinstance(context, str) and context.strip()
        assert spec.context("alpha") != spec.context("beta")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_thousand_choices_train_and_pseudo_label(tiny_llama, tmp_path):
    """1,000 choices: the expert's labels from the training split index into all of them, and
    pseudo-labelling scores every choice (shared-context fast path against the per-choice twin)."""
    import numpy as np

    from lm_eval_approx.features.pseudo_labels import pseudo_label
    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.training.examples import task_examples

    name = _write_task(tmp_path, [f"c{i}" for i in range(1000)], "Text: {{text}}\nAnswer:", "label", None, True)
    try:
        spec = get_task_spec(name, include_path=[str(tmp_path)])
        rows = task_examples(spec, None, 0)
        assert [r.label_text for r in rows[:2]] == ["c0", "c1"]
        model, tokenizer = load_model(tiny_llama).eval(), load_tokenizer(tiny_llama)
        fast = pseudo_label(model, tokenizer, spec, ["one text", "another"], batch_size=64)
        slow = pseudo_label(model, tokenizer, spec, ["one text", "another"], batch_size=64, shared_context=False)
        assert fast.logprobs.shape == (2, 1000)
        np.testing.assert_allclose(fast.logprobs, slow.logprobs, atol=1e-3)
    finally:
        lm_eval_tasks.reset_task_caches()
