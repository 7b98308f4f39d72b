"""Any lm-eval task as the target, end to end: a brand-new YAML task over temporary JSONL files
(its own prompt, two choices, no Python) gets an expert from its own training split
(``finetune --task`` without ``--data``), is approximated with ``--model approx`` through
``--include_path``, and runs in a leaderboard whose config names the folder (``include_path``) and
makes the expert from the task (``expert: {data: task}``). Also: ``load_jsonl_splits`` (disjoint
seeded splits of one file, as examples/tasks use), and the training documents' labels."""

from __future__ import annotations

import json

import pytest

from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.tasks.dataset_loaders import load_jsonl_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "Note: {{text}}\\nMood:"


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"note {i} felt {'bright and warm' if i % 2 else 'grey and cold'}", "label": i % 2}
            for i in range(start, start + n)]


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _task_folder(tmp_path, name: str = "my_moods", prompt: str = PROMPT, target: str = "label"):
    """A user's task YAML with train and test JSONL files of its own: (folder, train rows)."""
    folder = tmp_path / f"{name}_tasks"
    folder.mkdir()
    train, test = _rows(12), _rows(6, start=100)
    files = {"train": _write_jsonl(tmp_path / f"{name}_train.jsonl", train),
             "test": _write_jsonl(tmp_path / f"{name}_test.jsonl", test)}
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {files['train']}\n    test: {files['test']}\n"
        f"training_split: train\ntest_split: test\noutput_type: multiple_choice\n"
        f"doc_to_text: \"{prompt}\"\ndoc_to_choice: ['sad', 'happy']\ndoc_to_target: {target}\n"
        "metric_list:\n  - metric: acc\n"
    )
    return folder, train


@pytest.fixture
def fresh_tasks():
    from lm_eval_approx.plugins import registry
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    yield
    registry._included.clear()
    reset_task_caches()


def test_jsonl_splits_are_disjoint_seeded_and_checked(tmp_path):
    data = _write_jsonl(tmp_path / "all.jsonl", _rows(50))
    splits = load_jsonl_splits(file=data, test_size=10, validation_size=5, seed=3, version=1.0)
    assert {name: len(split) for name, split in splits.items()} == {"test": 10, "validation": 5, "train": 35}
    texts = {name: {row["text"] for row in split} for name, split in splits.items()}
    assert not texts["test"] & texts["train"] and not texts["validation"] & (texts["train"] | texts["test"])
    assert len(texts["test"] | texts["validation"] | texts["train"]) == 50
    again = load_jsonl_splits(file=data, test_size=10, validation_size=5, seed=3)
    assert [r["text"] for r in again["test"]] == [r["text"] for r in splits["test"]]
    other = load_jsonl_splits(file=data, test_size=10, seed=4)
    assert [r["text"] for r in other["test"]] != [r["text"] for r in splits["test"]]
    assert "validation" not in other and set(splits["test"].column_names) == {"text", "label"}
    with pytest.raises(ConfigError, match="test_size"):
        load_jsonl_splits(file=data, test_size=50)
    with pytest.raises(ConfigError, match="test_size"):
        load_jsonl_splits(file=data, test_size=0)
    with pytest.raises(ConfigError, match="existing file"):
        load_jsonl_splits(file=str(tmp_path / "missing.jsonl"), test_size=1)
    with pytest.raises(ConfigError, match="file"):
        load_jsonl_splits(test_size=1)


def test_jsonl_splits_read_mirror_relative_files(mirror):
    splits = load_jsonl_splits(file="seed/sst2.jsonl", test_size=1000, seed=0)
    assert len(splits["test"]) == 1000 and len(splits["train"]) == 27977 - 1000


def test_training_documents_take_int_string_and_choice_targets(tmp_path, fresh_tasks):
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.examples import task_examples

    folder, train = _task_folder(tmp_path)
    spec = get_task_spec("my_moods", include_path=[str(folder)])
    every = task_examples(spec, None, 0)
    assert [(e.text, e.label) for e in every] == [(r["text"], r["label"]) for r in train]
    assert every[0].label_text == "sad" and every[1].label_text == "happy"
    drawn = task_examples(spec, 5, 7)
    assert len(drawn) == 5 and {e.text for e in drawn} <= {r["text"] for r in train}
    assert drawn == task_examples(spec, 5, 7)

    named, _ = _task_folder(tmp_path, "my_named", target="\"{{['sad', 'happy'][label]}}\"")
    named_spec = get_task_spec("my_named", include_path=[str(named)])
    assert [e.label for e in task_examples(named_spec, None, 0)] == [r["label"] for r in train]

    bad, _ = _task_folder(tmp_path, "my_bad", target="\"{{'meh' if label else 'sad'}}\"")
    with pytest.raises(ConfigError, match="choice index 0..1 or one of the choices"):
        task_examples(get_task_spec("my_bad", include_path=[str(bad)]), None, 0)


def test_a_task_without_training_split_asks_for_data(tmp_path, fresh_tasks):
    from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
    from lm_eval_approx.training.examples import task_examples

    folder, _ = _task_folder(tmp_path)
    yaml = next(folder.glob("*.yaml"))
    yaml.write_text(yaml.read_text().replace("training_split: train\n", ""))
    with pytest.raises(ConfigError, match="training_split.*--data"):
        task_examples(get_task_spec("my_moods", include_path=[str(folder)]), None, 0)


def test_new_yaml_task_expert_from_its_training_split_then_approx_through_include_path(
        tiny_llama, tmp_path, monkeypatch, capsys, fresh_tasks):
    """The any-task end-to-end check: no code change, no --data for the expert."""
    from lm_eval_approx.cli import main

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    folder, _ = _task_folder(tmp_path)
    expert = tmp_path / "expert"
    assert main(["finetune", "--base", tiny_llama, "--task", "my_moods", "--include-path", str(folder),
                 "--out", str(expert), "--epochs", "1", "--no-progress"]) == 0
    assert "11 training / 1 validation examples" in capsys.readouterr().out
    record = json.loads((expert / "training.json").read_text())
    assert record["task"] == "my_moods"
    corpus = _write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text {i} about {w}"}
                                                   for i, w in enumerate(["sun", "rain"] * 8)])
    out = tmp_path / "scores"
    assert main(["run", "--model", "approx", "--model_args",
                 f"base={tiny_llama},finetuned={expert},task=my_moods,strategy=select,k=5,corpus={corpus},"
                 "dim=64,train_epochs=1,train_validation_fraction=0.0",
                 "--include_path", str(folder), "--tasks", "my_moods", "--device", "cpu",
                 "--output_path", str(out)]) == 0
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    assert result["config"]["approx"]["selected"] == 5
    assert 0.0 <= result["results"]["my_moods"]["acc,none"] <= 1.0


def _config(base: str, folder, **changes) -> dict:
    config = {
        "name": "user-task", "base": base, "task": "my_moods", "include_path": [str(folder)],
        "expert": {"data": "task", "size": 8, "seed": 0},
        "corpus": {"spec": "", "size": 12, "seed": 0},
        "strategies": [{"name": "random", "seeds": [0]}, "select"], "budgets": [4], "limit": 4,
        "recipe": {"epochs": 1, "batch_size": 8, "max_length": 64, "validation_fraction": 0.0},
        "approx": {"dim": 64, "extract_batch_size": 8, "extract_max_length": 64},
        "similarity": {"embed": False, "reference_size": 8}, "batch_size": 8,
    }
    config.update(changes)
    return config


def test_leaderboard_on_a_user_task_named_by_include_path(tiny_llama, tmp_path, monkeypatch, fresh_tasks):
    """A leaderboard whose target is the user's task: include_path in the config, the expert made
    from the task's own training split, every cell scored by lm-eval on the task."""
    from lm_eval_approx.leaderboard.config import config_from_dict
    from lm_eval_approx.leaderboard.runner import cell_hash, run_leaderboard

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    folder, train = _task_folder(tmp_path)
    pool = _write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text {i} about {w}"}
                                                 for i, w in enumerate(["sun", "rain", "dust"] * 6)])
    raw = _config(tiny_llama, folder, corpus={"spec": pool, "size": 12, "seed": 0})
    config = config_from_dict(raw).resolve()
    out = tmp_path / "board"
    run_leaderboard(config, out, progress=False)
    cells = {json.loads(p.read_text())["config"]["leaderboard"]["cell"]: json.loads(p.read_text())
             for p in (out / "results").glob("*.json")}
    assert set(cells) == {"theta0", "expert", "random-k4-s0", "select-k4-s0"}
    for result in cells.values():
        assert "acc,none" in result["results"]["my_moods"]
    assert cells["select-k4-s0"]["config"]["leaderboard"]["true_documents"] == 0
    before = cell_hash(config, config.cells()[2])
    yaml = next(folder.glob("*.yaml"))
    yaml.write_text(yaml.read_text().replace("Mood:", "Feeling:"))
    from lm_eval_approx.tasks.lm_eval_tasks import reset_task_caches

    reset_task_caches()
    assert cell_hash(config_from_dict(raw).resolve(), config.cells()[2]) != before


@pytest.mark.parametrize("changes, key", [
    ({"include_path": [123]}, "include_path"),
    ({"include_path": ["/no/such/folder"]}, "include_path"),
    ({"expert": {"data": "tsak", "size": 8}}, "expert.data"),
])
def test_leaderboard_user_task_config_errors_name_the_key(tiny_llama, tmp_path, changes, key, fresh_tasks):
    from lm_eval_approx.leaderboard.config import config_from_dict

    folder, _ = _task_folder(tmp_path)
    with pytest.raises(ApproxError) as caught:  # the folder's existence: when the config is resolved
        config_from_dict(_config(tiny_llama, folder, corpus={"spec": "seed:wikitext2"}, **changes)).resolve()
    assert caught.value.field == key


def test_features_command_finds_a_user_task_through_include_path(tiny_llama, tmp_path, fresh_tasks):
    """``features --include-path`` pseudo-labels with the user's two choices (labels 0/1 only)."""
    import numpy as np
    import torch

    from lm_eval_approx.cli import main
    from lm_eval_approx.features.build import open_feature_stores
    from lm_eval_approx.models.loading import load_model, load_tokenizer

    tuned = load_model(tiny_llama)
    with torch.no_grad():
        tuned.lm_head.weight.add_(0.01 * torch.randn_like(tuned.lm_head.weight))
    tuned.save_pretrained(tmp_path / "tuned")
    load_tokenizer(tiny_llama).save_pretrained(tmp_path / "tuned")
    folder, _ = _task_folder(tmp_path)
    corpus = _write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text {i}"} for i in range(6)])
    args = ["features", "--base", tiny_llama, "--finetuned", str(tmp_path / "tuned"), "--task", "my_moods",
            "--corpus", corpus, "--params", "head", "--dim", "32", "--out", str(tmp_path / "store")]
    assert main(args + ["--include-path", str(folder)]) == 0
    store = open_feature_stores(tmp_path / "store")[0]
    assert len(store) == 6 and set(np.unique(store.labels)) <= {0, 1}
