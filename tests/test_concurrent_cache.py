"""Two processes sharing one cache folder: one computes a stage, the other waits and reuses it;
stages of different keys run side by side (the lock is per stage key, not global)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

RENDEZVOUS_TIMEOUT_S = 60.0
POLL_S = 0.02
HOLD_S = 0.5
JOIN_TIMEOUT_S = 120.0


def _compute_once(log: Path, hold_s: float):
    """A stage body that logs each call and holds the lock a while (so the other process queues)."""

    def compute(folder: Path) -> dict:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(hold_s)
        payload = os.urandom(64).hex()  # differs on every call: equal results prove one computation
        (folder / "payload.txt").write_text(payload)
        return {"payload": payload}

    return compute


def _same_key_worker(cache: str, log: str, barrier, results) -> None:
    os.environ["LM_EVAL_APPROX_CACHE"] = cache
    from lm_eval_approx.cache.stages import run_stage

    barrier.wait()
    record = run_stage("shared", {"x": 1}, _compute_once(Path(log), HOLD_S))
    results.put((record.info["payload"], (record.path / "payload.txt").read_text(), record.cached))


def _rendezvous_worker(cache: str, me: str, other: str, flags: str, results) -> None:
    """Compute stage ``me`` and, inside it, wait until stage ``other`` has started computing too."""
    os.environ["LM_EVAL_APPROX_CACHE"] = cache
    from lm_eval_approx.cache.stages import run_stage

    def compute(folder: Path) -> dict:
        (Path(flags) / me).touch()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while not (Path(flags) / other).exists():
            if time.monotonic() > deadline:
                return {"met": False}
            time.sleep(POLL_S)
        return {"met": True}

    results.put((me, run_stage("parallel", {"name": me}, compute).info["met"]))


def _run(target, arg_sets) -> list:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=target, args=(*args, results)) for args in arg_sets]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=JOIN_TIMEOUT_S) for _ in procs]
    for proc in procs:
        proc.join(JOIN_TIMEOUT_S)
        assert proc.exitcode == 0
    return out


def test_two_processes_compute_one_stage_once_and_share_it(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "calls.log"
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    out = _run(_same_key_worker, [(str(cache), str(log), barrier)] * 2)
    assert len(log.read_text().split()) == 1
    (payload_a, file_a, cached_a), (payload_b, file_b, cached_b) = out
    assert payload_a == payload_b == file_a == file_b
    assert sorted([cached_a, cached_b]) == [False, True]
    stage_json = next((cache / "stages" / "shared").glob("*/stage.json"))
    assert json.loads(stage_json.read_text())["files"]["payload.txt"]["size"] == len(payload_a)


def test_different_keys_run_in_parallel(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    cache = str(tmp_path / "cache")
    out = dict(_run(_rendezvous_worker, [(cache, "a", "b", str(flags)), (cache, "b", "a", str(flags))]))
    assert out == {"a": True, "b": True}  # each saw the other computing at the same time
