"""Configs are built without I/O and resolved by one explicit step.

Building an ``ApproxConfig`` or a leaderboard config checks types, ranges and choices only: with
lm-eval's TaskManager, the task lookups, the plugin registries and every file-system call refused
(``no_io``), construction still succeeds, unknown names and missing folders included. ``resolve()``
then raises the named errors construction used to raise (unknown task, strategy, options, extra
task, include folder, missing data), and returns a copy that keeps what it loaded; what needs it
(the task spec, the retraining rule, a cell hash) refuses an unresolved config by name. A dry run
without the data mirror lists the cells and says what it could not check, and why.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from pathlib import Path

import pytest
import yaml

from lm_eval_approx.approx_config import ApproxConfig, UnresolvedConfigError
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.leaderboard.config import LeaderboardConfigError, TargetNotLoadedError, config_from_dict
from lm_eval_approx.tasks.lm_eval_tasks import TaskLoadError, UnknownTaskError, reset_task_caches

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu"
NOWHERE = "/nonexistent/lm-eval-approx-data"


class _Refused(dict):
    """A registry table that refuses to be read: any lookup means a plugin registry was consulted."""

    def __contains__(self, key):
        raise AssertionError(f"registry {key!r} looked up while building a config")

    __getitem__ = __contains__


@contextlib.contextmanager
def no_io():
    """lm-eval's TaskManager, our task lookups, the plugin manager and registries, and the file
    system (open, stat, listdir, scandir) all raise inside this block. A recipe's ``mixed_precision:
    auto`` asks the hardware (torch, /proc/cpuinfo: ``training/precision.py``), not data or tasks:
    that answer is given here."""
    import lm_eval.tasks

    from lm_eval_approx.plugins import manager, registry
    from lm_eval_approx.tasks import lm_eval_tasks
    from lm_eval_approx.training import precision

    def refuse(what):
        def call(*args, **kwargs):
            raise AssertionError(f"{what} while building a config: {args[:1]}")
        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LM_EVAL_APPROX_DATA", NOWHERE)
        mp.setattr(lm_eval.tasks.TaskManager, "__init__", refuse("lm-eval's TaskManager built"))
        mp.setattr(lm_eval_tasks, "search_paths", refuse("a task looked up"))
        mp.setattr(manager, "get_plugin_manager", refuse("the plugin manager loaded"))
        mp.setattr(registry, "_built", _Refused())
        mp.setattr(precision, "native_bf16", lambda: False)
        for name in ("stat", "lstat", "listdir", "scandir"):
            mp.setattr(os, name, refuse(f"os.{name}"))
        mp.setattr(builtins, "open", refuse("open()"))
        yield


@pytest.fixture
def fresh_tasks():
    """Task specs loaded again by the test (the data mirror it sees), and again after it."""
    reset_task_caches()
    yield
    reset_task_caches()


def _grid(**changes) -> dict:
    grid = {"base": "smollm2-135m", "task": "approx_agnews", "expert": {"data": "ag_news:train", "size": 10},
            "corpus": {"spec": "seed:wikitext2", "size": 50}, "strategies": ["random", "select"], "budgets": [5]}
    grid.update(changes)
    return grid


def test_the_guard_refuses_what_resolving_does():
    """``no_io`` is not vacuous: the lookups that resolve() makes fail inside it."""
    with no_io(), pytest.raises(AssertionError):
        ApproxConfig(base="b", finetuned="f").resolve()
    with no_io(), pytest.raises(AssertionError):
        config_from_dict(_grid()).resolve()


def test_building_an_approx_config_does_no_io():
    with no_io():
        config = ApproxConfig(base="b", finetuned="f", task="no_such_task", strategy="no_such_strategy",
                              corpus="seed:wikitext2+my_pool.jsonl", k=5, dim=64, device="cuda:1")
        with pytest.raises(UnresolvedConfigError):
            config.task_spec
        with pytest.raises(UnresolvedConfigError):
            config.strategy_class
    assert config.to_dict()["task"] == "no_such_task"


def test_building_leaderboard_configs_does_no_io():
    """Every published config, and one naming what does not exist, builds with nothing reachable."""
    published = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(RESULTS.glob("*.yaml"))]
    assert published
    odd = _grid(task="no_such_task", include_path=["/no/such/folder"], extra_tasks=["no_such_lm_eval_task"],
                strategies=["no_such_strategy", {"name": "select", "options": {"bogus": 1}}])
    with no_io():
        configs = [config_from_dict(raw) for raw in [*published, odd]]
        for config in configs:
            assert config.cells()
            with pytest.raises(UnresolvedConfigError):
                config.task_spec
    assert all(config.retraining is None for config, raw in zip(configs, published) if "retraining" not in raw)


def test_construction_still_refuses_bad_values_by_name():
    with no_io():
        with pytest.raises(LeaderboardConfigError) as caught:
            config_from_dict(_grid(budgets=[0]))
        assert caught.value.field == "budgets[0]"
        with pytest.raises(LeaderboardConfigError) as caught:
            config_from_dict(_grid(corpus={"spec": "seed:wikitext2+nothing"}))
        assert caught.value.field == "corpus.spec"
        with pytest.raises(LeaderboardConfigError) as caught:
            config_from_dict(_grid(approx={"dim": -3}))
        assert caught.value.field == "approx.dim"
        with pytest.raises(LeaderboardConfigError) as caught:
            config_from_dict(_grid(include_path=[3]))
        assert caught.value.field == "include_path"
        with pytest.raises(ConfigError) as caught:
            ApproxConfig(base="b", finetuned="f", k=-1)
        assert caught.value.field == "k"


def test_resolving_an_approx_config_raises_the_named_errors(mirror, fresh_tasks):
    with pytest.raises(UnknownTaskError, match="approx_agnews"):
        ApproxConfig(base="b", finetuned="f", task="agnews").resolve()
    with pytest.raises(UnknownNameError, match="Did you mean 'select'"):
        ApproxConfig(base="b", finetuned="f", strategy="selct").resolve()
    config = ApproxConfig(base="b", finetuned="f")
    resolved = config.resolve()
    assert resolved == config and resolved.resolve() is resolved
    assert resolved.task_spec.name == "approx_agnews" and resolved.strategy_class.name == "select"
    with pytest.raises(UnresolvedConfigError):
        config.task_spec  # the config it was resolved from is left as it was


def test_resolving_without_the_data_mirror_names_the_missing_data(monkeypatch, fresh_tasks):
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", NOWHERE)
    with pytest.raises(TaskLoadError, match="DataNotFoundError"):
        ApproxConfig(base="b", finetuned="f").resolve()
    config = config_from_dict(_grid())
    with pytest.raises(TargetNotLoadedError, match="LM_EVAL_APPROX_DATA") as caught:
        config.resolve()
    assert caught.value.field == "task" and isinstance(caught.value, LeaderboardConfigError)


@pytest.mark.parametrize("changes, key", [
    ({"task": "approx_nonesuch"}, "task"),
    ({"strategies": ["random", "selekt"]}, "strategies[1].name"),
    ({"strategies": [{"name": "select_batched", "options": {"batch_sise": 4}}]}, "strategies[0].options.batch_sise"),
    ({"extra_tasks": ["no_such_lm_eval_task"]}, "extra_tasks[0].name"),
    ({"include_path": ["/no/such/folder"]}, "include_path"),
])
def test_resolving_a_leaderboard_config_names_the_key(changes, key, mirror, fresh_tasks):
    config = config_from_dict(_grid(**changes))
    with pytest.raises(LeaderboardConfigError) as caught:
        config.resolve()
    assert caught.value.field == key and not isinstance(caught.value, TargetNotLoadedError)


def test_a_resolved_leaderboard_config_keeps_what_it_loaded_and_hashes_as_its_snapshot(mirror, fresh_tasks):
    """The rule fills ``retraining``; the config it came from stays unresolved; a cell worker's
    config rebuilt from the snapshot hashes every cell the same."""
    from lm_eval_approx.leaderboard.cell_keys import cell_hash
    from lm_eval_approx.training.retraining_rule import rule_for_task

    config = config_from_dict(_grid(condition="task_texts"))
    resolved = config.resolve()
    assert resolved.resolve() is resolved and config.retraining is None
    assert resolved.retraining == rule_for_task(resolved.task_spec, "task_texts")
    cell = resolved.cells()[2]
    with pytest.raises(UnresolvedConfigError):
        cell_hash(config, cell)
    with pytest.raises(UnresolvedConfigError):
        config.retraining_for(cell.label)
    again = config_from_dict(json.loads(json.dumps(resolved.to_dict()))).resolve()
    assert again.to_dict() == resolved.to_dict()
    assert [cell_hash(again, c) for c in again.cells()] == [cell_hash(resolved, c) for c in resolved.cells()]


def test_a_dry_run_without_the_data_mirror_lists_the_cells_and_says_what_it_skipped(tmp_path, monkeypatch, capsys,
                                                                                     fresh_tasks):
    from lm_eval_approx.cli import main

    monkeypatch.setenv("LM_EVAL_APPROX_DATA", NOWHERE)
    config_file = tmp_path / "grid.yaml"
    config_file.write_text(json.dumps(_grid(seeds=[0, 1])))
    out = tmp_path / "out"
    assert main(["leaderboard", "--config", str(config_file), "--out", str(out), "--resume", "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "leaderboard 'leaderboard': 6 cells on cpu"
    assert [line.strip() for line in printed[1:7]] == ["theta0", "expert", "random-k5-s0", "random-k5-s1",
                                                       "select-k5-s0", "select-k5-s1"]
    printed = "\n".join(printed)
    assert "not checked without the target task 'approx_agnews'" in printed and "LM_EVAL_APPROX_DATA" in printed
    # A run cannot go on without its task: a named error, and nothing written.
    assert main(["leaderboard", "--config", str(config_file), "--out", str(out)]) == 2
    assert "task=" in capsys.readouterr().err and not out.exists()
