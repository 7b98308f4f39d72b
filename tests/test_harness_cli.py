"""`lm-eval-approx run` is lm-eval's own CLI with our tasks and models: same results as
lm_eval.simple_evaluate, tasks found from any working directory, readable offline errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_approx.harness.lm_eval_cli import resolve_model_args, rewrite_argv

LIMIT = 6


def _mini_mirror(root: Path) -> Path:
    (root / "ag_news").mkdir(parents=True)
    (root / "msmarco").mkdir()
    topics = ["peace talks in the capital", "the team won the match", "stocks and profits rose", "a new chip and software"]
    for split in ("train", "test"):
        with (root / "ag_news" / f"{split}.jsonl").open("w") as fh:
            for i in range(12):
                fh.write(json.dumps({"text": f"{topics[i % 4]} number {i}", "label": i % 4}) + "\n")
        with (root / "msmarco" / f"{split}.jsonl").open("w") as fh:
            for i in range(8):
                fh.write(json.dumps({"pid": i, "text": f"passage {i} answers the query about {topics[i % 4]}"}) + "\n")
    return root


def _cli(args, cwd, env):
    return subprocess.run(
        [sys.executable, "-m", "lm_eval_approx.cli", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )


def _env(**extra):
    env = {k: v for k, v in os.environ.items()}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra)
    return env


def test_run_passthrough_matches_simple_evaluate(tiny_llama, tmp_path, monkeypatch):
    mirror = _mini_mirror(tmp_path / "mirror")
    out = tmp_path / "out"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    proc = _cli(
        ["run", "--model", "hf", "--model_args", f"pretrained={tiny_llama}", "--tasks",
         "approx_agnews,approx_msmarco", "--limit", str(LIMIT), "--device", "cpu", "--batch_size", "4",
         "--output_path", str(out), "--seed", "0"],
        cwd=workdir, env=_env(LM_EVAL_APPROX_DATA=str(mirror)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "approx_agnews" in proc.stdout and "word_perplexity" in proc.stdout
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    cli_results = json.loads(files[0].read_text())

    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    import lm_eval

    from lm_eval_approx.harness.lm_eval_cli import task_manager

    direct = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_llama}", tasks=["approx_agnews", "approx_msmarco"],
        limit=LIMIT, device="cpu", batch_size=4, task_manager=task_manager(),
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )
    for task in ("approx_agnews", "approx_msmarco"):
        ours, theirs = cli_results["results"][task], direct["results"][task]
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if isinstance(value, float):
                assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)
            else:
                assert ours[key] == value
    assert cli_results["configs"]["approx_agnews"]["doc_to_choice"] is not None


def test_user_include_path_still_works(tiny_llama, tmp_path):
    mirror = _mini_mirror(tmp_path / "mirror")
    user_tasks = tmp_path / "user_tasks"
    user_tasks.mkdir()
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"q": f"q{i}", "a": "yes"}) + "\n" for i in range(4)))
    (user_tasks / "my_yesno.yaml").write_text(
        "task: my_yesno\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['yes', 'no']\n"
        "doc_to_target: 0\nmetric_list:\n  - metric: acc\n"
    )
    proc = _cli(
        ["run", "--model", "hf", "--model_args", f"pretrained={tiny_llama}", "--tasks", "my_yesno,approx_agnews",
         "--include_path", str(user_tasks), "--limit", "3", "--device", "cpu"],
        cwd=tmp_path, env=_env(LM_EVAL_APPROX_DATA=str(mirror)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "my_yesno" in proc.stdout and "approx_agnews" in proc.stdout


def test_offline_without_mirror_is_a_readable_error(tiny_llama, tmp_path):
    env = _env()
    env.pop("LM_EVAL_APPROX_DATA", None)
    proc = _cli(
        ["run", "--model", "hf", "--model_args", f"pretrained={tiny_llama}", "--tasks", "approx_agnews", "--limit", "2",
         "--device", "cpu"],
        cwd=tmp_path, env=env,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lm-eval-approx run: error:") and "LM_EVAL_APPROX_DATA" in last


def test_model_args_aliases_are_rewritten(monkeypatch, tmp_path):
    import lm_eval_approx.harness.lm_eval_cli as harness

    monkeypatch.setattr(harness, "resolve_model", lambda name: f"/resolved/{name}")
    assert resolve_model_args("pretrained=smollm2-135m,dtype=float32") == "pretrained=/resolved/smollm2-135m,dtype=float32"
    assert resolve_model_args("pretrained=gpt2,peft=/x") == "pretrained=gpt2,peft=/x"
    assert json.loads(resolve_model_args('{"pretrained": "smollm2-135m"}')) == {"pretrained": "/resolved/smollm2-135m"}
    assert rewrite_argv(["--model_args=pretrained=smollm2-135m", "--tasks", "x"]) == [
        "--model_args=pretrained=/resolved/smollm2-135m", "--tasks", "x"]


def test_unknown_task_name_is_lm_evals_error(tiny_llama, tmp_path):
    proc = _cli(
        ["run", "--model", "hf", "--model_args", f"pretrained={tiny_llama}", "--tasks", "approx_agnew", "--limit", "2"],
        cwd=tmp_path, env=_env(),
    )
    assert proc.returncode != 0
    assert "approx_agnew" in proc.stderr


@pytest.mark.slow
def test_smollm2_alias_scores_agnews(mirror, tmp_path):
    import time

    from lm_eval_approx.models.loading import load_model, resolve_model

    first = resolve_model("smollm2-135m")
    start = time.perf_counter()
    again = resolve_model("smollm2-135m")
    model = load_model("smollm2-135m")
    reload_seconds = time.perf_counter() - start
    assert first == again and (Path(first) / "model.safetensors").is_file()
    assert model.config.tie_word_embeddings
    print(f"cached smollm2-135m reload: {reload_seconds:.2f} s")
    proc = _cli(
        ["run", "--model", "hf", "--model_args", "pretrained=smollm2-135m", "--tasks", "approx_agnews", "--limit", "20",
         "--device", "cpu", "--batch_size", "16", "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=_env(LM_EVAL_APPROX_DATA=str(mirror)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    acc = result["results"]["approx_agnews"]["acc,none"]
    assert 0.3 <= acc <= 1.0, f"SmolLM2 zero-shot AG News accuracy {acc} is far from the expected ~0.65"


def test_msmarco_last_scores_the_spaced_last_word_given_the_rest(tiny_llama, tmp_path, monkeypatch):
    """The oracle: log p(" word" | every word before it) summed over the word's tokens by hand.
    Version 1.0 of the task asked for the word glued to the context (no space), ~e^10 too unlikely."""
    import lm_eval
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_approx.harness.lm_eval_cli import task_manager

    mirror = _mini_mirror(tmp_path / "mirror")
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama}", tasks=["approx_msmarco_last"],
                                     limit=3, device="cpu", batch_size=2, task_manager=task_manager(),
                                     log_samples=True, bootstrap_iters=0)
    samples = result["samples"]["approx_msmarco_last"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    texts = [json.loads(line)["text"] for line in (mirror / "msmarco" / "test.jsonl").read_text().splitlines()]
    for sample in samples:
        context, target = sample["arguments"][0]
        words = texts[sample["doc_id"]].split()
        assert (context, target) == (" ".join(words[:-1]), " " + words[-1])
        context_ids = tokenizer(context).input_ids
        whole = tokenizer(context + target).input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
        expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))
        assert sample["filtered_resps"][0][0] == pytest.approx(expected, abs=1e-4)
    assert result["versions"]["approx_msmarco_last"] == 2.0


def _user_task_folder(tmp_path):
    """A user's multiple-choice task (own prompt, two choices, local JSONL): (folder, data file)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [{"text": f"review {i} was {'great' if i % 2 else 'dull'}", "label": i % 2} for i in range(8)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "my_reviews.yaml").write_text(
        "task: my_reviews\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Review: {{text}}\\nSentiment:\"\n"
        "doc_to_choice: ['negative', 'positive']\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    return folder, data


@pytest.fixture
def user_task(tmp_path):
    """The user's task in a plugin's task folder, registered for the test; yields its data file."""
    from lm_eval_approx import hookspecs
    from lm_eval_approx.plugins import registry
    from lm_eval_approx.plugins.manager import get_plugin_manager
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    folder, data = _user_task_folder(tmp_path)

    class UserTasks:
        @hookspecs.hookimpl
        def register_tasks(self, register):
            register(folder)

    get_plugin_manager().register(UserTasks(), name="user-tasks")
    registry.reset_registries()
    try:
        yield data
    finally:
        get_plugin_manager().unregister(name="user-tasks")
        registry.reset_registries()
        reset_task_caches()


def test_finetune_on_a_user_task_in_a_registered_folder(tiny_llama, user_task, tmp_path, capsys):
    """A user's multiple-choice task in a plugin's task folder is a target: ``finetune --task`` trains
    on it, rendered by the task's own prompt (tests/test_task_specs.py checks the rendering)."""
    from lm_eval_approx.cli import main

    out = tmp_path / "expert"
    assert main(["finetune", "--base", tiny_llama, "--task", "my_reviews", "--data", str(user_task), "--out", str(out),
                 "--epochs", "1", "--no-progress"]) == 0
    assert "7 training / 1 validation examples" in capsys.readouterr().out
    assert (out / "adapter_config.json").is_file()


def test_finetune_finds_a_user_task_through_include_path(tiny_llama, tmp_path, capsys):
    from lm_eval_approx.cli import main
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    folder, data = _user_task_folder(tmp_path)
    try:
        assert main(["finetune", "--base", tiny_llama, "--task", "my_reviews", "--data", str(data),
                     "--out", str(tmp_path / "x"), "--epochs", "1", "--no-progress"]) == 2
        assert "my_reviews" in capsys.readouterr().err
        assert main(["finetune", "--base", tiny_llama, "--task", "my_reviews", "--include-path", str(folder),
                     "--data", str(data), "--out", str(tmp_path / "expert"), "--epochs", "1", "--no-progress"]) == 0
        assert (tmp_path / "expert" / "adapter_config.json").is_file()
        assert main(["finetune", "--base", tiny_llama, "--task", "my_reviews", "--include-path", str(tmp_path / "no"),
                     "--data", str(data), "--out", str(tmp_path / "y"), "--no-progress"]) == 2
        assert "include_path" in capsys.readouterr().err
    finally:
        reset_task_caches()


def test_select_approximates_a_user_task_scored_by_lm_eval(tiny_llama, tmp_path, monkeypatch):
    """The whole loop on a user's task found only through lm-eval's own ``--include_path``: an
    expert from its data, SELECT on gradient features of candidates pseudo-labelled with its two
    choices, and lm-eval scoring the approximation on it."""
    from lm_eval_approx.cli import main
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    folder, data = _user_task_folder(tmp_path)
    expert = tmp_path / "expert"
    try:
        assert main(["finetune", "--base", tiny_llama, "--task", "my_reviews", "--include-path", str(folder),
                     "--data", str(data), "--out", str(expert), "--epochs", "1", "--no-progress"]) == 0
        corpus = tmp_path / "candidates.jsonl"
        corpus.write_text("".join(json.dumps({"text": f"candidate {i} is {'good' if i % 3 else 'bad'}"}) + "\n"
                                  for i in range(16)))
        out = tmp_path / "scores"
        assert main(["run", "--model", "approx", "--model_args",
                     f"base={tiny_llama},finetuned={expert},task=my_reviews,strategy=select,k=6,corpus={corpus},"
                     "dim=64,train_epochs=1,train_validation_fraction=0.0",
                     "--include_path", str(folder), "--tasks", "my_reviews", "--device", "cpu",
                     "--output_path", str(out)]) == 0
    finally:
        reset_task_caches()
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    approx = result["config"]["approx"]
    assert approx["strategy"] == "select" and approx["selected"] == 6
    assert set(approx["stage_keys"]) == {"labels", "features", "selection", "training"}
    assert "acc,none" in result["results"]["my_reviews"]
    labels = {json.loads(line)["label_text"] for line in Path(approx["selection_file"]).read_text().splitlines()}
    assert labels <= {"negative", "positive"}
