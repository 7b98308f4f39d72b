"""Executors: cell locks (busy while a live process holds one, free once it is killed), the claim
protocol, the phases and retries of the driver, the flags; and, on the tiny preset, local
--workers 2, Ray and submitit's local executor each giving the serial run's every metric while
computing every shared stage once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from lm_eval_approx.cli import main
from lm_eval_approx.leaderboard import executors
from lm_eval_approx.leaderboard.config import APPROX, EXPERT, THETA0, Cell
from lm_eval_approx.leaderboard.executors import LOST, CellFailedError, Executor, Outcome, Task
from lm_eval_approx.leaderboard.locks import (
    BUSY,
    RAN,
    SCORED,
    SKIPPED,
    STARTED,
    FileLockHeld,
    claim_and_run,
    claim_each,
    lock_path,
    read_ledger,
)

HOLDER_TIMEOUT_S = 60
HOLD = """
import sys, time
from lm_eval_approx.leaderboard.locks import FileLockHeld
lock = FileLockHeld(sys.argv[1])
assert lock.acquire(blocking=False)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float = 600) -> subprocess.Popen:
    """Another process holding the lock at ``path`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_is_busy_while_its_holder_lives_and_taken_over_once_it_is_killed(tmp_path):
    path = lock_path(tmp_path, "select-k4-s0")
    holder = _hold(path)
    lock = FileLockHeld(path)
    assert not lock.acquire(blocking=False)
    assert lock.owner()["pid"] == holder.pid  # the file names who holds it
    holder.send_signal(signal.SIGKILL)
    holder.wait(HOLDER_TIMEOUT_S)
    assert path.exists()  # the dead holder's file is still there: it is stale, not held
    assert lock.acquire(blocking=False)
    assert lock.owner()["pid"] == os.getpid()
    lock.release()


def test_claim_runs_a_cell_once_and_records_it(tmp_path):
    ran = []
    assert claim_and_run(tmp_path, "a", lambda: False, lambda: ran.append("a")) == RAN
    assert claim_and_run(tmp_path, "a", lambda: True, lambda: ran.append("again")) == SKIPPED
    holder = _hold(lock_path(tmp_path, "b"))
    try:
        assert claim_and_run(tmp_path, "b", lambda: False, lambda: ran.append("b")) == BUSY
    finally:
        holder.kill()
        holder.wait(HOLDER_TIMEOUT_S)
    assert ran == ["a"]
    assert [(e["cell"], e["event"], e["pid"]) for e in read_ledger(tmp_path)] == [
        ("a", STARTED, os.getpid()), ("a", SCORED, os.getpid())]


def test_a_cell_another_worker_holds_is_waited_for_and_run_when_that_worker_dies(tmp_path):
    cells = [Cell(name, APPROX) for name in ("a", "b", "c")]
    holder = _hold(lock_path(tmp_path, "b"))
    threading.Timer(1.0, holder.kill).start()  # dies before finishing b
    ran = []
    claim_each(tmp_path, cells, lambda cell: False, lambda cell: ran.append(cell.id))
    holder.wait(HOLDER_TIMEOUT_S)
    assert ran == ["a", "c", "b"]


class FakeExecutor(Executor):
    """Records each batch it is given; a cell's outcomes come from a script, one per try."""

    def __init__(self, script: dict[str | None, list[str]], retries: int = 2):
        super().__init__(workers=2, retries=retries)
        self.script, self.batches = script, []

    def _map(self, tasks, report):
        self.batches.append([(t.cell, t.wait) for t in tasks])
        outcomes = {}
        for task in tasks:
            kinds = [RAN] if task.wait else self.script.get(task.cell, [RAN])  # a waiting worker runs it
            outcomes[task] = Outcome(kinds.pop(0) if len(kinds) > 1 else kinds[0], "boom")
            report(task, outcomes[task])
        return outcomes


def _grid(*ids: str) -> list[Cell]:
    kinds = {"theta0": THETA0, "expert": EXPERT}
    return [Cell(i, kinds.get(i, APPROX)) for i in ids]


def _run(executor: Executor, cells: list[Cell], tmp_path) -> int:
    done = []
    config = type("Config", (), {"to_dict": lambda self: {}})()
    executor.run(config, tmp_path, cells, resume=True, planned={c.id: "-" for c in cells},
                 on_done=lambda: done.append(1))
    return len(done)


def test_upstream_cells_run_first_then_the_approximations_then_the_busy_ones_waiting(tmp_path):
    fake = FakeExecutor({"r-s1": [BUSY], "r-s0": [LOST, RAN]})
    assert _run(fake, _grid("theta0", "expert", "r-s0", "r-s1", "s-s0"), tmp_path) == 5
    assert fake.batches == [[("theta0", False), ("expert", False)],
                            [("r-s0", False), ("r-s1", False), ("s-s0", False)],
                            [("r-s0", False)],  # its process died: run again
                            [("r-s1", True)]]  # held by another worker: waited for at the end
    # Without the expert's cell, an upstream task makes θf before the approximations start.
    fake = FakeExecutor({})
    assert _run(fake, _grid("r-s0"), tmp_path) == 1
    assert fake.batches == [[(None, False)], [("r-s0", False)]]


def test_a_cell_that_keeps_dying_or_raises_fails_the_run_after_its_phase(tmp_path):
    fake = FakeExecutor({"r-s0": [LOST], "s-s0": [executors.ERROR]}, retries=1)
    with pytest.raises(CellFailedError) as info:
        _run(fake, _grid("r-s0", "s-s0", "t-s0"), tmp_path)
    assert "s-s0: error (boom)" in str(info.value) and "r-s0: lost" in str(info.value)
    assert fake.batches[1:] == [[("r-s0", False), ("s-s0", False), ("t-s0", False)], [("r-s0", False)]]
    fake = FakeExecutor({None: [executors.ERROR]})
    with pytest.raises(CellFailedError, match="θf"):  # θf failed: no approximation is started
        _run(fake, _grid("r-s0"), tmp_path)
    assert fake.batches == [[(None, False)]]


@pytest.mark.parametrize("flags, field", [
    (["--workers", "0"], "--workers"),
    (["--ray-address", "auto"], "--ray-address"),
    (["--executor", "ray", "--num-cpus", "-1"], "--num-cpus"),
    (["--retries", "-1"], "--retries"),
])
def test_bad_executor_flags_fail_before_anything_runs(flags, field, tmp_path, capsys):
    assert main(["leaderboard", "--preset", "tiny", "--set", "base=/nonexistent", "--out", str(tmp_path / "o"),
                 *flags]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- the tiny preset through each executor, against the serial run ----------------------------------
TIMING_COLUMNS = ("selection_s", "training_s")


def _mirror() -> Path:
    path = Path(os.environ.get("LM_EVAL_APPROX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (path / "ag_news" / "train.jsonl").is_file():
        pytest.skip("data mirror not available (the tiny preset draws AG News and WikiText-2 from it)")
    return path


def _tiny(tmp_path_factory, name: str, base: str, *flags: str) -> Path:
    """The tiny preset run through the CLI on a cache of its own; returns its output folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LM_EVAL_APPROX_DATA", str(_mirror()))
        mp.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path_factory.mktemp(f"{name}-cache")))
        out = tmp_path_factory.mktemp(f"{name}-out") / "tiny"
        assert main(["leaderboard", "--preset", "tiny", "--set", f"base={base}", "--out", str(out),
                     "--no-progress", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    from conftest import save_tiny_model

    _mirror()
    base = save_tiny_model(tmp_path_factory.mktemp("exec-llama"), "llama")
    return base, _tiny(tmp_path_factory, "serial", base)


def _scores(out: Path) -> dict[str, tuple]:
    """Every metric of every cell (and its per-document values), by cell."""
    found = {}
    for path in sorted((out / "results").glob("*.json")):
        record = json.loads(path.read_text())
        found[path.stem] = (record["results"], record["n-samples"], record["versions"],
                            record["config"]["leaderboard"]["per_doc"])
    return found


def _table(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
            for row in csv.DictReader((out / "leaderboard.csv").open())]


def _check_like_serial(out: Path, serial_out: Path) -> None:
    assert _scores(out) == _scores(serial_out)
    assert _table(out) == _table(serial_out)
    # every shared stage was computed by exactly one cell, every other cell found it cached
    computed = Counter()
    for path in (out / "results").glob("*.json"):
        approx = json.loads(path.read_text())["config"].get("approx")
        for label, key in (approx or {}).get("stage_keys", {}).items():
            computed[(label, key)] += not approx["stage_cached"][label]
    assert computed and set(computed.values()) == {1}, computed
    events = Counter((e["cell"], e["event"]) for e in read_ledger(out))
    cells = {p.stem for p in (out / "results").glob("*.json")}
    assert {cell: events[(cell, SCORED)] for cell in cells} == dict.fromkeys(cells, 1)
    pids = {e["pid"] for e in read_ledger(out)}
    assert len(pids) == len(cells) and os.getpid() not in pids  # a process of its own per cell


@pytest.mark.slow
def test_local_workers_give_the_serial_scores(serial, tmp_path_factory):
    base, serial_out = serial
    _check_like_serial(_tiny(tmp_path_factory, "workers", base, "--workers", "2"), serial_out)


@pytest.mark.slow
def test_ray_gives_the_serial_scores(serial, tmp_path_factory):
    pytest.importorskip("ray")
    base, serial_out = serial
    _check_like_serial(_tiny(tmp_path_factory, "ray", base, "--executor", "ray", "--workers", "1"), serial_out)


@pytest.mark.slow
def test_submitit_local_gives_the_serial_scores(serial, tmp_path_factory):
    pytest.importorskip("submitit")
    base, serial_out = serial
    out = _tiny(tmp_path_factory, "slurm", base, "--executor", "slurm", "--slurm-cluster", "local", "--workers", "2")
    _check_like_serial(out, serial_out)
    assert list((out / ".cells" / "submitit").glob("*/*_log.err"))  # the jobs' logs are kept with the run


@pytest.mark.slow
def test_two_processes_on_one_folder_survive_one_being_killed_mid_cell(tmp_path):
    """benchmarks/kill_resume.py --mode two-local: the other process finishes the grid, every cell
    scored once with the serial scores, no stage computed twice, every cache verifies."""
    _mirror()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume.py"),
                           "--mode", "two-local", "--trials", "2", "--seed", "1", "--work", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]  # at least one kill landed, none failed
    assert "two-local: survived" in done.stdout and "failed" not in done.stdout, done.stdout


# ---- what a cluster cell asks for: the config's resources, flags over them ----------------------------------
def _cluster_args(**flags):
    import argparse

    defaults = dict(executor="ray", workers=None, retries=2, num_cpus=None, num_gpus=None, ray_address=None,
                    slurm_partition=None, slurm_time=60, slurm_cluster="slurm")
    return argparse.Namespace(**{**defaults, **flags})


def _resources_config(**resources):
    from lm_eval_approx.leaderboard.config import config_from_dict

    return config_from_dict({"base": "b", "expert": {"adapter": "x"}, "strategies": ["random"],
                             **({"resources": resources} if resources else {})})


def test_a_cluster_cell_asks_for_the_config_resources_unless_a_flag_overrides_them():
    from lm_eval_approx.commands.leaderboard import make_executor

    config = _resources_config(num_cpus=3, num_gpus=0.5)
    requests = {
        "config": make_executor(_cluster_args(), config),
        "--num-gpus 0": make_executor(_cluster_args(num_gpus=0.0), config),
        "--num-cpus 2": make_executor(_cluster_args(num_cpus=2.0), config),
        "slurm": make_executor(_cluster_args(executor="slurm"), config),  # whole CPUs and GPUs
        "no resources": make_executor(_cluster_args(), _resources_config()),  # 1 CPU, GPUs by device
    }
    assert {name: (e.num_cpus, e.num_gpus) for name, e in requests.items()} == {
        "config": (3, 0.5), "--num-gpus 0": (3, 0.0), "--num-cpus 2": (2.0, 0.5), "slurm": (3, 1),
        "no resources": (1, None)}


def test_ray_remote_options_carry_the_config_resources(monkeypatch):
    """What ``ray.remote`` is given, with a stand-in ray module (no cluster is started)."""
    import types

    from lm_eval_approx.commands.leaderboard import make_executor

    options = {}
    fake = types.SimpleNamespace(is_initialized=lambda: True,
                                 remote=lambda **given: options.update(given) or (lambda function: function))
    monkeypatch.setitem(sys.modules, "ray", fake)
    config = _resources_config(num_cpus=4, num_gpus=1)
    executor = make_executor(_cluster_args(), config)
    executor.config = config
    executor._start()
    assert (options["num_cpus"], options["num_gpus"], options["max_calls"]) == (4, 1, 1)


@pytest.mark.parametrize("resources, key", [
    ({"num_cpus": 0}, "resources.num_cpus"), ({"num_gpus": -1}, "resources.num_gpus"),
    ({"num_cpus": "two"}, "resources.num_cpus"), ({"gpus": 1}, "resources.gpus"), (4, "resources"),
])
def test_bad_config_resources_are_named(resources, key):
    from lm_eval_approx.leaderboard.config import LeaderboardConfigError, config_from_dict

    with pytest.raises(LeaderboardConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"base": "b", "expert": {"adapter": "x"}, "strategies": ["random"], "resources": resources})
