"""Executors for clusters: each cell a Ray task, or a task of a SLURM job array (through submitit).

Both run ``cell_worker.cell_task`` (see ``executors.py`` for the phases, the locks and retries),
which must import on every node: install the package there as here. Outputs and caches are shared
through the filesystem: ``--out`` and ``LM_EVAL_APPROX_CACHE`` on storage every node mounts, with
``flock`` honoured across nodes (the cell and stage locks).

Ray: ``RayExecutor(address=None)`` starts a local Ray cluster (``workers`` × the CPUs of a cell,
when ``workers`` is given; else every core); with ``address`` it joins that cluster. A cell asks
for ``num_cpus`` CPUs and ``num_gpus`` GPUs (default: 1 when the config's device is CUDA), runs in
a fresh worker process (``max_calls=1``) and is retried by Ray when its worker or node dies. The
driver's ``LM_EVAL_APPROX_*``, ``HF_*``, ``TRANSFORMERS_*``, ``TOKENIZERS_*`` and ``OMP_NUM_THREADS``
variables are passed to the workers.

SLURM: ``SlurmExecutor`` submits one job array per phase (``partition``, ``time_min`` and GPUs and
CPUs per cell; ``workers``: at most that many array tasks at a time); ``cluster="local"`` runs the
same jobs as local processes (submitit's local executor: tests, or a machine without SLURM). Job
logs go to ``OUT/.cells/submitit``. A job that died without a result is submitted again.
"""

from __future__ import annotations

import os
import time

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.leaderboard.cell_worker import cell_task
from lm_eval_approx.leaderboard.executors import (
    DEFAULT_RETRIES,
    ERROR,
    LOST,
    Executor,
    Outcome,
    Task,
    wants_gpu,
)
from lm_eval_approx.leaderboard.locks import cells_dir

PASSED_ENV_PREFIXES = ("LM_EVAL_APPROX_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
PASSED_ENV = ("OMP_NUM_THREADS",)
SUBMITIT_DIR = "submitit"
DEFAULT_SLURM_MINUTES = 24 * 60
POLL_S = 1.0
ERROR_TAIL = 1500


def passed_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES) or k in PASSED_ENV}


def _import(name: str, extra: str):
    try:
        return __import__(name)
    except ImportError:
        raise ConfigError("--executor", extra, f"an installed {name} (pip install {name})") from None


class RayExecutor(Executor):
    driver_retries = False  # Ray retries a task whose worker or node died

    def __init__(self, workers: int | None = None, retries: int = DEFAULT_RETRIES, num_cpus: float = 1,
                 num_gpus: float | None = None, address: str | None = None):
        super().__init__(workers, retries)
        self.num_cpus, self.num_gpus, self.address = num_cpus, num_gpus, address

    def _start(self) -> None:
        ray = _import("ray", "ray")
        self.started = not ray.is_initialized()
        if self.started:
            options = {"include_dashboard": False, "runtime_env": {"env_vars": passed_env()}}
            if self.address:
                ray.init(address=self.address, **options)
            else:
                cpus = None if self.workers is None else max(1, int(self.workers * self.num_cpus))
                ray.init(num_cpus=cpus, **options)
        gpus = self.num_gpus if self.num_gpus is not None else (1 if wants_gpu(self.config) else 0)
        # max_calls=1: every cell in a fresh process (no model or CUDA state left by another cell)
        self.remote = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_calls=1, max_retries=self.retries,
                                 retry_exceptions=False)(cell_task)

    def _stop(self) -> None:
        import ray

        if getattr(self, "started", False):
            ray.shutdown()

    def _map(self, tasks, report):
        import ray
        from ray.exceptions import RayError, RayTaskError

        refs = {self.remote.remote(*self.arguments(task)): task for task in tasks}
        outcomes = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            task = refs.pop(ready[0])
            try:
                outcome = Outcome(ray.get(ready[0]))
            except RayTaskError as exc:  # the cell raised
                outcome = Outcome(ERROR, str(exc)[-ERROR_TAIL:])
            except RayError as exc:  # its worker or node died on every try
                outcome = Outcome(LOST, str(exc)[-ERROR_TAIL:])
            outcomes[task] = outcome
            report(task, outcome)
        return outcomes


class SlurmExecutor(Executor):
    def __init__(self, workers: int | None = None, retries: int = DEFAULT_RETRIES, num_cpus: int = 1,
                 num_gpus: int | None = None, partition: str | None = None, time_min: int = DEFAULT_SLURM_MINUTES,
                 cluster: str = "slurm"):
        super().__init__(workers, retries)
        self.num_cpus, self.num_gpus, self.partition = num_cpus, num_gpus, partition
        self.time_min, self.cluster = time_min, cluster

    def _start(self) -> None:
        submitit = _import("submitit", "slurm")
        self.executor = submitit.AutoExecutor(folder=cells_dir(self.out) / SUBMITIT_DIR / "%j", cluster=self.cluster)
        gpus = self.num_gpus if self.num_gpus is not None else (1 if wants_gpu(self.config) else 0)
        self.executor.update_parameters(
            name="lm-eval-approx-cell", timeout_min=int(self.time_min), nodes=1, tasks_per_node=1,
            cpus_per_task=int(self.num_cpus), gpus_per_node=int(gpus), slurm_partition=self.partition,
            slurm_array_parallelism=self.workers)

    def _map(self, tasks, report):
        from submitit.core.utils import FailedJobError, UncompletedJobError

        # On SLURM the whole phase is one array (SLURM runs `workers` at a time); locally, jobs are
        # started as earlier ones end.
        room = self.workers if self.cluster == "local" and self.workers else len(tasks)
        waiting, outcomes = list(tasks), {}
        running: dict = {}  # submitit job → its task
        while waiting or running:
            if waiting and len(running) < room:
                batch, waiting = waiting[:room - len(running)], waiting[room - len(running):]
                jobs = self.executor.map_array(cell_task, *zip(*(self.arguments(task) for task in batch)))
                running.update(zip(jobs, batch))
            for job in [job for job in running if job.done()]:
                task = running.pop(job)
                try:
                    outcome = Outcome(job.result())
                except FailedJobError as exc:  # the cell raised
                    outcome = Outcome(ERROR, str(exc)[-ERROR_TAIL:])
                except UncompletedJobError as exc:  # killed, timed out, node lost: no result
                    outcome = Outcome(LOST, str(exc)[-ERROR_TAIL:])
                outcomes[task] = outcome
                report(task, outcome)
            if running:
                time.sleep(POLL_S)
        return outcomes
