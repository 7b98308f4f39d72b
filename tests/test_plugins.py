"""The plugin host: hooks, registries, the example third-party plugin, helpful unknown-name errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from lm_eval_approx import hookspecs
from lm_eval_approx.errors import UnknownNameError
from lm_eval_approx.plugins.manager import get_plugin_manager, list_plugins
from lm_eval_approx.plugins.registry import reset_plugins
from lm_eval_approx.plugins.registry import DuplicateNameError, task_registry
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.strategies import CandidatePool, Selection, Strategy

# Every hook and the tests that exercise it; test_every_hook_has_a_test fails for a new hook
# until a test is named here.
HOOK_TESTS = {
    "register_strategies": ["test_plugin_strategy_registered_and_unregistered", "test_builtin_random"],
    "register_tasks": ["test_plugin_task_folder", "test_builtin_tasks_listed"],
    "register_commands": ["test_plugin_command"],
}


def test_every_hook_has_a_test():
    hooks = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")}
    assert hooks == set(HOOK_TESTS), f"hooks without a test entry: {hooks - set(HOOK_TESTS)}"
    module = inspect.getmodule(test_every_hook_has_a_test)
    for hook, tests in HOOK_TESTS.items():
        for name in tests:
            assert callable(getattr(module, name, None)), f"{hook}: test {name} does not exist"


class _EchoStrategy(Strategy):
    name = "echo_first"
    description = "the first k candidates (test plugin)"

    def _select(self, pool, k, seed):
        return Selection(indices=np.arange(k))


class _Plugin:
    @hookspecs.hookimpl
    def register_strategies(self, register):
        register(_EchoStrategy, aliases=("echo",))


@pytest.fixture
def plugin_registered():
    pm = get_plugin_manager()
    plugin = _Plugin()
    pm.register(plugin, name="test-plugin")
    from lm_eval_approx.plugins import registry

    registry.reset_registries()
    try:
        yield plugin
    finally:
        pm.unregister(name="test-plugin")
        registry.reset_registries()


def test_builtin_random():
    entry = strategy_registry().get("random")
    assert entry.plugin.distribution == "lm-eval-approx"
    pool = CandidatePool(ids=[str(i) for i in range(50)])
    first = entry.obj().run(pool, 10, seed=3).indices
    again = entry.obj().run(pool, 10, seed=3).indices
    other = entry.obj().run(pool, 10, seed=4).indices
    assert len(set(first.tolist())) == 10 and first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_plugin_strategy_registered_and_unregistered(plugin_registered):
    entry = strategy_registry().get("echo")
    assert entry.name == "echo_first" and entry.plugin.name == "test-plugin"
    pool = CandidatePool(ids=list("abcdef"))
    assert entry.obj().run(pool, 3).indices.tolist() == [0, 1, 2]


def test_registry_forgets_unregistered_plugin():
    assert "echo_first" not in strategy_registry()


def test_duplicate_strategy_name_is_a_named_error():
    class Clash(_EchoStrategy):
        name = "random"

    class ClashPlugin:
        @hookspecs.hookimpl
        def register_strategies(self, register):
            register(Clash)

    pm = get_plugin_manager()
    pm.register(ClashPlugin(), name="clash")
    from lm_eval_approx.plugins import registry

    registry.reset_registries()
    try:
        with pytest.raises(DuplicateNameError, match="already registered by lm-eval-approx"):
            strategy_registry()
    finally:
        pm.unregister(name="clash")
        registry.reset_registries()


def test_unknown_strategy_lists_known_and_closest():
    with pytest.raises(UnknownNameError) as info:
        strategy_registry().get("randon")
    message = str(info.value)
    assert "Did you mean 'random'?" in message
    assert "random" in info.value.known


def test_builtin_tasks_listed():
    names = task_registry().names()
    assert {"approx_agnews", "approx_msmarco", "approx_msmarco_last", "approx_suite"} <= set(names)
    assert task_registry().get("approx_agnews").description


def test_plugin_task_folder(tmp_path):
    (tmp_path / "my_task.yaml").write_text("# description: mine\ntask: my_task\ndataset_path: x\n")

    class TaskPlugin:
        @hookspecs.hookimpl
        def register_tasks(self, register):
            register(tmp_path)

    pm = get_plugin_manager()
    pm.register(TaskPlugin(), name="task-plugin")
    from lm_eval_approx.plugins import registry

    registry.reset_registries()
    try:
        entry = task_registry().get("my_task")
        assert entry.obj == tmp_path.resolve() and entry.description == "mine"
        assert tmp_path.resolve() in registry.task_folders()
    finally:
        pm.unregister(name="task-plugin")
        registry.reset_registries()


def test_plugin_command(capsys):
    class CommandPlugin:
        @hookspecs.hookimpl
        def register_commands(self, cli):
            parser = cli.add_parser("hello", help="say hello")
            parser.add_argument("--name", default="world")
            parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)

    pm = get_plugin_manager()
    pm.register(CommandPlugin(), name="command-plugin")
    try:
        from lm_eval_approx.cli import main

        assert main(["hello", "--name", "approx"]) == 0
        assert "hello approx" in capsys.readouterr().out
    finally:
        pm.unregister(name="command-plugin")


def test_third_party_plugins_disabled_by_env(monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_LOAD_PLUGINS", "")
    reset_plugins()
    assert [p.distribution for p in list_plugins()] == ["lm-eval-approx"]


def test_example_plugin_from_entry_point(monkeypatch):
    pytest.importorskip("lm_eval_approx_stratified", reason="example plugin not installed (make test installs it)")
    monkeypatch.delenv("LM_EVAL_APPROX_LOAD_PLUGINS")
    reset_plugins()
    entry = strategy_registry().get("stratified")
    assert entry.name == "stratified_random"
    assert entry.plugin.distribution == "lm-eval-approx-stratified"
    labels = np.array([0] * 90 + [1] * 10)
    pool = CandidatePool(ids=[str(i) for i in range(100)], labels=labels, num_classes=2)
    picked = entry.obj().run(pool, 20, seed=0).indices
    assert len(set(picked.tolist())) == 20
    assert (labels[picked] == 1).sum() == 10, "the minority class gets its full quota"
    assert entry.obj().run(pool, 20, seed=0).indices.tolist() == picked.tolist()


def test_example_plugin_listed_by_cli(monkeypatch, capsys):
    pytest.importorskip("lm_eval_approx_stratified", reason="example plugin not installed (make test installs it)")
    monkeypatch.setenv("LM_EVAL_APPROX_LOAD_PLUGINS", "stratified")
    reset_plugins()
    from lm_eval_approx.cli import main

    assert main(["strategies", "--json"]) == 0
    import json

    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["stratified_random"]["plugin"] == "lm-eval-approx-stratified 0.1.0"
    assert main(["plugins"]) == 0
    assert "lm-eval-approx-stratified" in capsys.readouterr().out


def test_hookspec_docstrings_say_when_and_what():
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("register_"):
            doc = inspect.getdoc(fn) or ""
            assert "Called" in doc and "Returns" in doc, name


def test_task_folder_is_package_data():
    from lm_eval_approx import tasks

    folder = tasks.configs_folder()
    assert (folder / "approx_agnews.yaml").is_file()
