"""Wall time of the tiny preset run serially and with ``--workers 2``, side by side.

Each run is a fresh ``lm-eval-approx leaderboard --preset tiny`` command on a cache of its own (so
both compute every stage and θf), on one tiny random Llama θ0; ``--repeats`` alternates the order.
Prints each run's seconds, whether their scores agree, and

    workers 2 / serial wall time: N.NNx

Needs the data mirror (LM_EVAL_APPROX_DATA). A tiny cell computes for a second or two, so the
ratio here is dominated by what each worker process pays to start (imports, lm-eval's task index)
and by how many cores are free; on real cells (minutes each) that start-up is a rounding error.

    python benchmarks/executors.py [--workers 2] [--repeats 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 1800


def _cpu_seconds() -> float:
    """CPU seconds of every finished child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(work: Path, name: str, base: str, flags: list[str]) -> tuple[float, float, dict]:
    out, cache = work / f"{name}-out", work / f"{name}-cache"
    for path in (out, cache):
        shutil.rmtree(path, ignore_errors=True)
    env = dict(os.environ, LM_EVAL_APPROX_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lm_eval_approx.cli", "leaderboard", "--preset", "tiny", "--set", f"base={base}",
           "--out", str(out), "--no-progress", *flags]
    started, cpu = time.perf_counter(), _cpu_seconds()
    with open(work / f"{name}.log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=log, stderr=log, timeout=RUN_TIMEOUT_S)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    scores = {p.stem: json.loads(p.read_text())["results"] for p in sorted((out / "results").glob("*.json"))}
    return seconds, cpu, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (the order alternates)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lm-eval-approx-executors-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import save_tiny_model

    base = save_tiny_model(work / "base", "llama")
    print(f"{os.cpu_count()} CPU cores; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    runs = {"serial": ([], [], []), "workers": ([], [], [])}
    flags = {"serial": [], "workers": ["--workers", str(args.workers)]}
    for repeat in range(args.repeats):
        for name in (("serial", "workers") if repeat % 2 == 0 else ("workers", "serial")):
            for kept, value in zip(runs[name], _run(work, name, base, flags[name])):
                kept.append(value)
            print(f"{name}: {runs[name][0][-1]:.1f} s wall, {runs[name][1][-1]:.1f} CPU s "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    serial, workers = (sum(runs[n][0]) / len(runs[n][0]) for n in ("serial", "workers"))
    same = all(s == w for s, w in zip(runs["serial"][2], runs["workers"][2]))
    print(f"scores of the {len(runs['serial'][2][0])} cells identical: {same}")
    print(f"serial wall time: {serial:.1f} s; workers {args.workers}: {workers:.1f} s")
    print(f"workers {args.workers} / serial wall time: {workers / serial:.2f}x")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
