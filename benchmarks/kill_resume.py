"""SIGKILL at random points of every stage, rerun, and check nothing was lost or silently wrong.

A tiny but real run (tiny random Llama θ0, a local JSONL candidate corpus) goes through the cached
pipeline — pseudo-labelling, gradient features, selection, training (stopped on the teacher-KL
probe, measured after every epoch, with θf's monitor distribution and the probe values at θ0 as
stages of their own) — and, in ``--mode leaderboard``,
through lm-eval scoring inside a one-strategy leaderboard (needs the data mirror, LM_EVAL_APPROX_DATA).

1. An uninterrupted baseline run records when each stage starts and how long it takes.
2. Each trial starts from the baseline's cache with the killed stage and everything after it
   removed (``leaderboard``: from nothing), waits for the stage to start, sleeps u × its measured
   duration (u uniform in [0, 1)), sends SIGKILL, then reruns to completion.
3. Survived means: the rerun finishes; its selection ids, adapter tensors and scores equal the
   baseline's; every stage finished before the rerun is reported cached with its stage.json (and
   every finished leaderboard results JSON) untouched; every stage.json's checksums verify.

    python benchmarks/kill_resume.py --trials 2                      # pipeline stages, 12 kills
    python benchmarks/kill_resume.py --mode leaderboard --trials 5   # all eight stages, 40 kills
    python benchmarks/kill_resume.py --mode weights --trials 3       # the weights condition's stages
    python benchmarks/kill_resume.py --mode fused --trials 2         # pipeline stages, fused_labels

``--mode fused`` is the pipeline run with ``fused_labels`` on a task whose choices one carrier row
scores under the tiny tokenizer: the labels stage runs the features stage inside it (a kill in
``labels`` can land in θf's store), and a trial of ``features`` rebuilds that store alone.

``--mode weights`` runs the leaderboard under the ``weights`` condition: a ``gen_knn`` row whose
target texts are sampled from θf (the ``generations`` stage) and whose retraining rule monitors
texts sampled from θf too (a second ``generations`` entry, inside the training stage).

The executor modes run a five-cell leaderboard (θ0, θf, select, random × 2 seeds) the way
``leaderboard/executors.py`` does, and kill the process running an approximation cell u × its
serial duration after the cell started (the cell ledger, ``OUT/.cells/ledger.jsonl``, says which
process runs which cell):

    --mode ray           a Ray worker (a local one-CPU Ray cluster): Ray runs the task again
    --mode ray-cluster   a whole node of a two-node local ``ray.cluster_utils.Cluster`` (one CPU
                         each), removed while it runs a cell: Ray runs the task on the other
    --mode slurm         a job of submitit's local executor (--workers 2): submitted again
    --mode two-local     one of two plain ``leaderboard --resume`` processes on one folder and
                         one cache: the other waits for the cell it held, then runs it

Survived means: the grid completes (by the executor's retry, the other process or, failing that,
a rerun with --resume); no cell is missing; every cell's scores equal the serial baseline's; the
ledger records every cell scored exactly once; no stage was computed by two cells; every
stage.json's checksums verify.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@"
# In the order they start: the monitor stages (θf's distribution on the monitor texts, the probe
# values at θ0) run inside the training stage, before its first epoch.
PIPELINE_STAGES = ("labels", "features", "selection", "monitor_teacher", "probe_start", "training")
LEADERBOARD_STAGES = PIPELINE_STAGES + ("evaluation", "leaderboard")
WEIGHTS_STAGES = ("generations", "selection", "monitor_teacher", "probe_start", "training", "evaluation",
                  "leaderboard")
# The stages of each mode in the order they start; a trial removes the killed stage and every later
# one (all of their cache entries) from the baseline's cache before it starts.
MODE_STAGES = {"pipeline": PIPELINE_STAGES, "fused": PIPELINE_STAGES, "leaderboard": LEADERBOARD_STAGES,
               "weights": WEIGHTS_STAGES}
PIPELINE_MODES = ("pipeline", "fused")
# " Sports" and " Business" are one token under the tiny tokenizer, " Sci/Tech" three: every document has a carrier.
CARRIER_TASK = "kill_resume_carrier"
# Cached stages of each mode (the others, evaluation and leaderboard, write results JSON only).
CACHED_STAGES = {mode: tuple(s for s in stages if s not in ("evaluation", "leaderboard"))
                 for mode, stages in MODE_STAGES.items()}
WEIGHTS_RULE = {"epochs": 2, "stop_on": "task_agreement", "patience": 1, "monitor_size": 8,
                "monitor_source": "finetuned"}
CORPUS_SIZE = 40
TOPICS = ("peace talks in the capital", "the team won the match", "stocks and profits rose", "a new chip and software")
CHILD_TIMEOUT_S = 900
EXECUTOR_MODES = ("ray", "ray-cluster", "slurm", "two-local")
EXECUTOR_STRATEGIES = ["select", {"name": "random", "seeds": [0, 1]}]
MIN_SLEEP_S = 0.0


# ---- the child: one run of the pipeline, printing stage markers ----------------------------------
def _child(args) -> int:
    import torch

    torch.set_num_threads(1)
    os.environ["LM_EVAL_APPROX_CACHE"] = str(args.cache)
    from lm_eval_approx import pipeline

    def mark(*words) -> None:
        print(MARK, time.time(), *words, flush=True)

    original = pipeline.run_stage

    def marked_stage(name, inputs, compute):
        mark("start", name)
        record = original(name, inputs, compute)
        mark("end", name, record.key, int(record.cached))
        return record

    from lm_eval_approx.cache import stages
    from lm_eval_approx.features import generation
    from lm_eval_approx.training import stop_signals

    # The probe-start stage looks run_stage up in cache.stages when it runs; the others imported it.
    pipeline.run_stage = stop_signals.run_stage = stages.run_stage = generation.run_stage = marked_stage
    mark("start", "leaderboard")
    if args.mode in PIPELINE_MODES:
        from lm_eval_approx.pipeline import ApproxConfig, run_approximation
        from lm_eval_approx.training.recipe import TrainingRecipe

        fused = {"task": _use_carrier_task(), "fused_labels": True} if args.mode == "fused" else {}
        config = ApproxConfig(base=str(args.work / "base"), finetuned=str(args.work / "finetuned"),
                              corpus=str(args.work / "candidates.jsonl"), strategy="select", k=8, dim=64,
                              extract_batch_size=8, extract_max_length=64, **fused)
        # stop_on=teacher_kl: the training stage also measures θf's held-out probe after every
        # epoch, so a kill can land inside a probe and the kept epoch must survive it.
        run_approximation(config, TrainingRecipe(epochs=2, batch_size=4, validation_fraction=0.0,
                                                 stop_on="teacher_kl", monitor_size=8))
    else:
        from lm_eval_approx.cli import main
        from lm_eval_approx.leaderboard import runner

        evaluate = runner.evaluate

        def marked_evaluate(*a, **k):
            mark("start", "evaluation")
            result = evaluate(*a, **k)
            mark("end", "evaluation", "-", 0)
            return result

        runner.evaluate = marked_evaluate
        code = main(["leaderboard", "--config", str(args.work / "leaderboard.json"), "--out", str(args.out),
                     "--resume", "--no-progress"])
        if code:
            return code
    mark("end", "leaderboard", "-", 0)
    return 0


def _use_carrier_task() -> str:
    """``CARRIER_TASK`` made loadable by name wherever the pipeline loads a task; returns the name."""
    from lm_eval_approx import approx_config
    from lm_eval_approx.features import build, config
    from lm_eval_approx.tasks.kinds import CLASSIFICATION
    from lm_eval_approx.tasks.template_spec import TemplateSpec

    spec = TemplateSpec(name=CARRIER_TASK, kind=CLASSIFICATION, template="Article: {text}\nTopic:",
                        choices=("Sports", "Business", "Sci/Tech"), max_words=64)
    for module in (approx_config, build, config):
        module.get_task_spec = lambda name, *a, _load=module.get_task_spec, **k: (
            spec if name == CARRIER_TASK else _load(name, *a, **k))
    return CARRIER_TASK


# ---- the harness ------------------------------------------------------------------------------------
def _setup(work: Path, mode: str) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import save_tiny_model

    save_tiny_model(work / "base", "llama", seed=0)
    save_tiny_model(work / "finetuned", "llama", seed=1)
    rows = [{"text": f"{TOPICS[(i * 3) % 4]} candidate {i}"} for i in range(CORPUS_SIZE)]
    (work / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if mode not in PIPELINE_MODES:
        from lm_eval_approx.leaderboard.sources import apply_overrides, read_yaml

        data = apply_overrides(read_yaml(preset="tiny"), [f"base={work / 'base'}"])
        data.update(strategies=["select"] if mode == "leaderboard" else EXECUTOR_STRATEGIES, extra_tasks=[],
                    corpus={"spec": str(work / "candidates.jsonl"), "size": CORPUS_SIZE, "seed": 0})
        if mode == "weights":
            data.update(condition="weights", strategies=["gen_knn"], retraining=dict(WEIGHTS_RULE),
                        approx={**data.get("approx", {}), "target_size": 8})
        (work / "leaderboard.json").write_text(json.dumps(data))


class Run:
    """One child process; its markers are read as they come (harness-side clock)."""

    def __init__(self, work: Path, cache: Path, out: Path, mode: str, log: Path):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", LM_EVAL_APPROX_LOAD_PLUGINS="")
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--work", str(work), "--cache", str(cache),
               "--out", str(out)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as stderr:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env)
        self.events: list[tuple[float, str, list[str]]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            words = line.split()
            if words[:1] == [MARK]:
                with self.changed:
                    self.events.append((time.monotonic(), words[2], words[3:]))
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for_start(self, stage: str) -> float | None:
        """Harness time at which ``stage`` started, or None when the run ended first."""
        with self.changed:
            while True:
                for t, kind, rest in self.events:
                    if kind == "start" and rest[0] == stage:
                        return t
                if self.proc.poll() is not None:
                    return None
                self.changed.wait(timeout=0.05)

    def finish(self) -> int:
        code = self.proc.wait(timeout=CHILD_TIMEOUT_S)
        time.sleep(0.05)
        return code

    def stages(self) -> dict[str, tuple[str, bool]]:
        """``{stage: (key, cached)}`` of every stage that ended (evaluation/leaderboard: no key; a stage
        that ran under several keys, as ``generations`` may: its last)."""
        return {name: (key, cached) for name, key, cached in self.ended()}

    def ended(self) -> set[tuple[str, str, bool]]:
        """``(stage, key, cached)`` of every stage run that ended, under every key it ran with."""
        return {(rest[0], rest[1], rest[2] == "1") for _, kind, rest in self.events if kind == "end"}

    def durations(self) -> dict[str, float]:
        """Seconds of each stage; of a stage that ran several times (``generations`` under the weights
        condition: the targets, then the monitor texts), its longest run, so kills cover it."""
        starts, spans = {}, {}
        for t, kind, rest in self.events:
            if kind == "start":
                starts[rest[0]] = t
            else:
                spans[rest[0]] = max(spans.get(rest[0], 0.0), t - starts[rest[0]])
        return spans


def _outputs(cache: Path, out: Path, keys: dict[str, tuple[str, bool]]) -> dict:
    """What must equal the baseline: selection ids, adapter tensors, scores."""
    from safetensors.torch import load_file

    stages = cache / "stages"
    ids = [json.loads(line)["id"] for line in
           (stages / "selection" / keys["selection"][0] / "selection.jsonl").read_text().splitlines()]
    adapter = load_file(stages / "training" / keys["training"][0] / "adapter" / "adapter_model.safetensors")
    scores = {p.name: json.loads(p.read_text())["results"] for p in sorted((out / "results").glob("*.json"))}
    return {"ids": ids, "adapter": adapter, "scores": scores}


def _same(a: dict, b: dict) -> list[str]:
    import torch

    wrong = [] if a["ids"] == b["ids"] else ["selection ids differ"]
    if a["adapter"].keys() != b["adapter"].keys() or not all(torch.equal(a["adapter"][k], b["adapter"][k])
                                                             for k in a["adapter"]):
        wrong.append("adapter tensors differ")
    if a["scores"] != b["scores"]:
        wrong.append("scores differ")
    return wrong


def _finished_files(cache: Path, out: Path) -> dict[str, int]:
    """mtime of every stage.json and results JSON: what a rerun must leave untouched."""
    found = {str(p): p.stat().st_mtime_ns for p in (cache / "stages").glob("*/*/stage.json")}
    found.update({str(p): p.stat().st_mtime_ns for p in (out / "results").glob("*.json")})
    return found


def _verify_checksums(cache: Path) -> list[str]:
    from lm_eval_approx.cache.integrity import FULL, find_damage

    problems = []
    for done in (cache / "stages").glob("*/*/stage.json"):
        record = json.loads(done.read_text())
        problems += [f"{done.parent.name}: {p}" for p in find_damage(done.parent, record.get("files", {}), FULL)]
    return problems


def _prepare(base_cache: Path, base_out: Path, mode: str, stage: str, cache: Path, out: Path) -> None:
    """The baseline's state just before ``stage`` started (``leaderboard``: nothing at all): every
    entry of the killed stage and of the cached stages after it removed, and the approximation
    cells' results (everything but θ0's and the expert's)."""
    if stage == "leaderboard":
        return
    shutil.copytree(base_cache, cache)
    shutil.copytree(base_out, out)
    cached = CACHED_STAGES[mode]
    for name in cached[cached.index(stage):] if stage in cached else ():
        shutil.rmtree(cache / "stages" / name, ignore_errors=True)
    for path in (out / "results").glob("*.json"):
        if path.stem not in ("theta0", "expert"):
            path.unlink()


def _keep(cache: Path, out: Path, root: Path) -> Path:
    """Move a failed trial's cache and output into its folder, for inspection."""
    for path in (cache, out):
        os.replace(path, root / path.name)
    return root


def trial(stage: str, work: Path, mode: str, baseline: dict, rng: random.Random) -> tuple[str, list[str]]:
    """One kill in ``stage`` and a rerun: ('survived' | 'failed' | 'missed', problems)."""
    root = Path(tempfile.mkdtemp(dir=work, prefix=f"trial-{stage}-"))
    cache, out = work / "cache", work / "out"  # the baseline's paths: model paths are part of stage keys
    for path in (cache, out):
        shutil.rmtree(path, ignore_errors=True)
    _prepare(baseline["cache"], baseline["out"], mode, stage, cache, out)
    killed = Run(work, cache, out, mode, root / "killed.log")
    started = killed.wait_for_start(stage)
    if started is None:
        killed.finish()
        shutil.rmtree(root, ignore_errors=True)
        return "missed", [f"the run ended before {stage} started"]
    delay = rng.random() * baseline["durations"][stage]
    time.sleep(max(MIN_SLEEP_S, started + delay - time.monotonic()))
    if killed.proc.poll() is not None:
        shutil.rmtree(root, ignore_errors=True)
        return "missed", [f"the run ended before the kill ({delay:.2f}s into {stage})"]
    killed.proc.send_signal(signal.SIGKILL)
    killed.finish()
    before = _finished_files(cache, out)
    rerun = Run(work, cache, out, mode, root / "rerun.log")
    if rerun.finish() != 0:
        return "failed", [f"the rerun exited with {rerun.proc.returncode}", f"kept in {_keep(cache, out, root)}"]
    try:
        problems = _same(baseline["outputs"], _outputs(cache, out, rerun.stages()))
    except (OSError, KeyError, ValueError) as exc:  # an output the rerun should have left is missing or unreadable
        problems = [f"outputs unreadable: {exc!r}"]
    after = _finished_files(cache, out)
    problems += [f"finished file rewritten: {p}" for p, t in before.items() if after.get(p) != t]
    reported = rerun.ended()
    finished = {(Path(p).parent.parent.name, Path(p).parent.name) for p in before if p.endswith("stage.json")}
    problems += [f"finished stage {name} {key} was computed again" for name, key, cached in reported
                 if not cached and (name, key) in finished]
    # A stage the rerun computed itself may be reported cached when it is asked for again (the weights
    # condition's target and monitor texts can be one generations entry).
    computed = {(name, key) for name, key, cached in reported if not cached}
    problems += [f"stage {name} {key} reported cached but was not finished before the rerun"
                 for name, key, cached in reported if cached and (name, key) not in finished | computed]
    problems += _verify_checksums(cache)
    if problems:
        return "failed", problems + [f"kept in {_keep(cache, out, root)}"]
    shutil.rmtree(root, ignore_errors=True)
    return "survived", problems


# ---- executor modes: kill the process (or node) running a cell ------------------------------------
APPROX_CELL_PREFIXES = ("select-", "random-")
START_TIMEOUT_S = 600
EXECUTOR_FLAGS = {
    "ray": ["--executor", "ray", "--workers", "1"],
    "ray-cluster": ["--executor", "ray"],  # + --ray-address of the two-node cluster
    "slurm": ["--executor", "slurm", "--slurm-cluster", "local", "--workers", "2"],
    "two-local": [],
}


def _leaderboard(work: Path, cache: Path, out: Path, flags: list[str], log: Path) -> subprocess.Popen:
    """A ``leaderboard --resume`` command on ``out`` and ``cache``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", LM_EVAL_APPROX_LOAD_PLUGINS="",
               LM_EVAL_APPROX_CACHE=str(cache))
    cmd = [sys.executable, "-m", "lm_eval_approx.cli", "leaderboard", "--config", str(work / "leaderboard.json"),
           "--out", str(out), "--resume", "--no-progress", *flags]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.Popen(cmd, stdout=handle, stderr=handle, cwd=ROOT, env=env)


def _ledger(out: Path) -> list[dict]:
    path = out / ".cells" / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _running_cells(out: Path) -> list[dict]:
    """Start events of approximation cells not scored since (by the same process)."""
    running = {}
    for event in _ledger(out):
        key = (event["cell"], event["pid"])
        if event["event"] == "start" and event["cell"].startswith(APPROX_CELL_PREFIXES):
            running[key] = event
        elif event["event"] == "scored":
            running.pop(key, None)
    return list(running.values())


def _grid_problems(cache: Path, out: Path, baseline: dict) -> list[str]:
    """Cells lost or scored differently, cells scored twice, stages computed twice, damaged caches."""
    scores = {p.stem: json.loads(p.read_text())["results"] for p in sorted((out / "results").glob("*.json"))}
    problems = [f"cell lost: {cell}" for cell in baseline if cell not in scores]
    problems += [f"scores differ: {cell}" for cell in scores if cell in baseline and scores[cell] != baseline[cell]]
    scored: dict[str, int] = {}
    for event in _ledger(out):
        if event["event"] == "scored":
            scored[event["cell"]] = scored.get(event["cell"], 0) + 1
    problems += [f"{cell} scored {n} times" for cell, n in scored.items() if n > 1]
    computed: dict[tuple, int] = {}
    for path in (out / "results").glob("*.json"):
        approx = json.loads(path.read_text())["config"].get("approx") or {}
        for label, key in approx.get("stage_keys", {}).items():
            computed[(label, key)] = computed.get((label, key), 0) + (not approx["stage_cached"][label])
    problems += [f"stage {label} {key} computed by {n} cells" for (label, key), n in computed.items() if n > 1]
    return problems + _verify_checksums(cache)


class TwoNodes:
    """A local Ray cluster of two one-CPU nodes; ``kill_worker`` removes the second one at once."""

    def __init__(self):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        self.add_worker()

    def add_worker(self) -> None:
        self.worker = self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def on_worker(self, pid: int) -> bool:
        import psutil

        raylet = self.worker.all_processes["raylet"][0].process.pid
        try:
            return pid in {p.pid for p in psutil.Process(raylet).children(recursive=True)}
        except psutil.NoSuchProcess:
            return False

    def kill_worker(self) -> None:
        self.cluster.remove_node(self.worker, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def executor_trial(mode: str, work: Path, baseline: dict, rng: random.Random, nodes: TwoNodes | None) -> tuple[str, list[str]]:
    """One kill while a cell runs, then the grid to completion: (survived | failed | missed, notes)."""
    root = Path(tempfile.mkdtemp(dir=work, prefix=f"trial-{mode}-"))
    cache, out = work / "cache", work / "out"
    for path in (cache, out):
        shutil.rmtree(path, ignore_errors=True)
    flags = EXECUTOR_FLAGS[mode] + (["--ray-address", nodes.address] if nodes else [])
    drivers = [_leaderboard(work, cache, out, flags, root / f"driver{i}.log") for i in range(2 if mode == "two-local" else 1)]
    deadline = time.monotonic() + START_TIMEOUT_S
    victim = None
    while victim is None and time.monotonic() < deadline and all(d.poll() is None for d in drivers):
        victim = next((e for e in _running_cells(out) if nodes is None or nodes.on_worker(e["pid"])), None)
        time.sleep(0.05)
    if victim is None:
        for d in drivers:
            d.wait(timeout=CHILD_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)
        return "missed", ["no approximation cell was seen running (on the worker node)"]
    delay = rng.random() * baseline["seconds"][victim["cell"]]
    time.sleep(max(0.0, victim["time"] + delay - time.time()))
    if not any(e["pid"] == victim["pid"] and e["cell"] == victim["cell"] for e in _running_cells(out)):
        for d in drivers:
            d.wait(timeout=CHILD_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)
        return "missed", [f"{victim['cell']} finished before the kill ({delay:.1f} s in)"]
    if nodes:
        nodes.kill_worker()
        what = f"removed the node running {victim['cell']}"
    else:
        os.kill(victim["pid"], signal.SIGKILL)
        what = f"killed pid {victim['pid']} running {victim['cell']}"
    notes = [f"{what} {time.time() - victim['time']:.1f} s after it started"]
    codes = [d.wait(timeout=CHILD_TIMEOUT_S) for d in drivers]
    survivors = [c for d, c in zip(drivers, codes) if d.pid != victim["pid"]]
    if survivors and all(c == 0 for c in survivors):
        notes.append("completed by " + ("the other process" if mode == "two-local" else "the executor's retry"))
    else:
        notes.append(f"exit codes {codes}; rerun with --resume")
        rerun = _leaderboard(work, cache, out, flags, root / "rerun.log")
        if rerun.wait(timeout=CHILD_TIMEOUT_S) != 0:
            return "failed", notes + [f"the --resume rerun exited with {rerun.returncode}", f"kept in {_keep(cache, out, root)}"]
    takers = [e["pid"] for e in _ledger(out) if e["event"] == "start" and e["cell"] == victim["cell"]]
    notes.append(f"{victim['cell']} started by pids {takers}")
    problems = _grid_problems(cache, out, baseline["scores"])
    if problems:
        return "failed", problems + notes + [f"kept in {_keep(cache, out, root)}"]
    notes.append(f"{len(baseline['scores'])} cells, each scored once, no stage computed twice, caches verify")
    shutil.rmtree(root, ignore_errors=True)
    return "survived", notes


def executor_trials(args) -> int:
    work = args.work or Path(tempfile.mkdtemp(prefix="lm-eval-approx-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    _setup(work, args.mode)
    started = time.perf_counter()
    base = _leaderboard(work, work / "baseline" / "cache", work / "baseline" / "out", [], work / "baseline.log")
    if base.wait(timeout=CHILD_TIMEOUT_S) != 0:
        print(f"baseline run failed with exit code {base.returncode}")
        return 1
    records = {p.stem: json.loads(p.read_text()) for p in (work / "baseline" / "out" / "results").glob("*.json")}
    baseline = {"scores": {cell: r["results"] for cell, r in records.items()},
                "seconds": {cell: r["config"]["leaderboard"]["wall_seconds"] for cell, r in records.items()}}
    print("baseline (serial) seconds: " + ", ".join(f"{c} {s:.1f}" for c, s in sorted(baseline["seconds"].items())),
          flush=True)
    rng = random.Random(args.seed)
    nodes = TwoNodes() if args.mode == "ray-cluster" else None
    counts = {"survived": 0, "failed": 0, "missed": 0}
    try:
        for _ in range(args.trials):
            outcome, notes = executor_trial(args.mode, work, baseline, rng, nodes)
            counts[outcome] += 1
            print(f"{args.mode}: {outcome} ({'; '.join(notes)})", flush=True)
            if nodes and outcome != "missed":
                nodes.add_worker()
    finally:
        if nodes:
            nodes.shutdown()
    kills = counts["survived"] + counts["failed"]
    if args.work is None and counts["failed"] == 0:
        shutil.rmtree(work, ignore_errors=True)
    print(f"kills survived / kills: {counts['survived']} / {kills} ({counts['missed']} missed) "
          f"in {time.perf_counter() - started:.0f} s")
    return 0 if counts["failed"] == 0 and kills > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2, help="kills per stage")
    parser.add_argument("--mode", choices=(*MODE_STAGES, *EXECUTOR_MODES), default="pipeline")
    parser.add_argument("--stages", default="", help="comma-separated subset of the stages to kill")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    if args.mode in EXECUTOR_MODES:
        return executor_trials(args)
    stages = MODE_STAGES[args.mode]
    if args.stages:
        stages = tuple(s for s in args.stages.split(",") if s)
    work = args.work or Path(tempfile.mkdtemp(prefix="lm-eval-approx-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    _setup(work, args.mode)
    started = time.perf_counter()
    (work / "out" / "results").mkdir(parents=True, exist_ok=True)
    base = Run(work, work / "cache", work / "out", args.mode, work / "baseline.log")
    if base.finish() != 0:
        print(f"baseline run failed with exit code {base.proc.returncode}")
        return 1
    (work / "baseline").mkdir()
    for name in ("cache", "out"):
        os.replace(work / name, work / "baseline" / name)
    keys = base.stages()
    baseline = {"cache": work / "baseline" / "cache", "out": work / "baseline" / "out", "keys": keys,
                "durations": base.durations(),
                "outputs": _outputs(work / "baseline" / "cache", work / "baseline" / "out", keys)}
    print("baseline seconds: " + ", ".join(f"{s} {baseline['durations'][s]:.1f}" for s in stages), flush=True)
    rng = random.Random(args.seed)
    counts = {s: {"survived": 0, "failed": 0, "missed": 0} for s in stages}
    for _ in range(args.trials):
        for stage in stages:
            outcome, problems = trial(stage, work, args.mode, baseline, rng)
            counts[stage][outcome] += 1
            print(f"{stage}: {outcome}" + (f" ({'; '.join(problems)})" if problems else ""), flush=True)
    kills = sum(c["survived"] + c["failed"] for c in counts.values())
    survived = sum(c["survived"] for c in counts.values())
    if args.work is None and survived == kills:
        shutil.rmtree(work, ignore_errors=True)
    for stage, c in counts.items():
        print(f"{stage}: {c['survived']} / {c['survived'] + c['failed']} kills survived ({c['missed']} missed)")
    print(f"kills survived / kills: {survived} / {kills} in {time.perf_counter() - started:.0f} s")
    return 0 if survived == kills else 1


if __name__ == "__main__":
    sys.exit(main())
