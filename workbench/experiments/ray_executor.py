"""Sweep points as Ray tasks (``executor="ray"``): each attempt a task with ``num_cpus``/``num_gpus`` (Ray sets
``CUDA_VISIBLE_DEVICES``). The tasks write their point folders themselves, so the sweep folder (and the
notebook, and the data) must be at the same path on every node: :func:`check_shared_storage` checks it
before the first point.
"""
from __future__ import annotations

import logging
import os
import socket

import uuid
from pathlib import Path
from typing import Any

from workbench.experiments.executors import LOCAL_OBJECT_STORE, STOP_GRACE, Attempt, Executor, SharedStorageError, run_attempt

log = logging.getLogger("workbench.experiments")


def _ray_attempt(spec: dict) -> dict:
    """A Ray task: one attempt; threads for the kernel from the task's CPUs (Ray sets the GPUs)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, int(spec["threads"])))
    record = run_attempt(spec)
    return record | {"devices": os.environ.get("CUDA_VISIBLE_DEVICES") or None}


def _probe(probe: str, token: str, notebook: str) -> dict:
    """A Ray task on one node: can it read the driver's probe file and the notebook, and write beside them?"""
    host = socket.gethostname()
    problems = []
    path = Path(probe)
    try:
        if path.read_text() != token:
            problems.append(f"{path} holds another content there")
    except OSError as err:
        problems.append(f"cannot read the driver's file {path} ({err.strerror or err})")
    if not Path(notebook).is_file():
        problems.append(f"no notebook {notebook}")
    reply = path.with_name(f"{path.name}-{host}-{os.getpid()}")
    try:
        reply.write_text(token)
    except OSError as err:
        problems.append(f"cannot write {reply.parent} ({err.strerror or err})")
        reply = None
    return {"host": host, "problems": problems, "reply": str(reply) if reply else None}


def check_shared_storage(out_dir: Path, notebook: Path, *, timeout: float = 300.0) -> list[str]:
    """Check that every alive Ray node sees ``out_dir`` and ``notebook`` at the same path.

    The driver writes a probe file in ``out_dir``; one task per node (pinned to it) reads it, looks
    for the notebook and writes a reply beside it, which the driver must then see.

    Returns:
        The hosts checked.

    Raises:
        SharedStorageError: naming each node and what it could not see.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = out_dir / f".probe-{token[:12]}"
    probe.write_text(token)
    probe_task = ray.remote(_probe)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [probe_task.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe), token, str(notebook)) for n in nodes]
        results = ray.get(refs, timeout=timeout)
        problems = []
        for node, result in zip(nodes, results):
            where = f"node {result['host']} ({node.get('NodeManagerAddress', '?')})"
            if result["reply"] and not Path(result["reply"]).is_file():
                result["problems"].append(f"wrote {result['reply']}, which the driver does not see")
            problems += [f"{where}: {p}" for p in result["problems"]]
        if problems:
            raise SharedStorageError(
                f"the sweep folder {out_dir} is not on storage every Ray node sees at the same path: "
                + "; ".join(problems) + ". Put the sweep folder, the notebooks and the data on a shared file "
                "system mounted at the same path on every node (README: 'Sweeps on a Ray cluster').")
        return [r["host"] for r in results]
    finally:
        for path in out_dir.glob(f"{probe.name}*"):
            path.unlink(missing_ok=True)


class RayExecutor(Executor):
    """Each attempt is a Ray task with ``num_cpus``/``num_gpus``; the driver (this process) keeps the sweep.

    Args:
        address: the cluster (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``); None: the runtime
            already initialised in this process, else a new local one.
        num_cpus, num_gpus: a point's resources (torch threads = ``num_cpus``).
        jobs: attempts submitted at once (None: as many as the cluster's CPUs/GPUs hold now).
    """

    kind = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 jobs: int | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError(f"executor 'ray' needs Ray ({err}): pip install -e '.[ray]'") from None
        if address is not None and ray.is_initialized():
            log.info("ray: already initialised in this process; address %s not used", address)
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            # a local runtime: no dashboard and a small object store (tasks return small records),
            # quicker to start on a busy machine
            local = {"include_dashboard": False, "object_store_memory": LOCAL_OBJECT_STORE} if address is None else {}
            tries = 3 if address is None else 1  # a local raylet gets 30 s to register: retry on a busy machine
            for attempt in range(tries):
                try:
                    ray.init(address=address, log_to_driver=False, **local)
                    break
                except Exception as err:  # noqa: BLE001 - Ray raises plain Exception when a start times out
                    ray.shutdown()
                    if attempt == tries - 1:
                        what = "start a local Ray runtime" if address is None else f"join the Ray cluster at {address}"
                        raise ConnectionError(f"could not {what}: {str(err).splitlines()[0]}") from err
        self.ray = ray
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        if jobs is None:
            resources = ray.cluster_resources()
            fits = [resources.get("CPU", 0) // num_cpus] if num_cpus else []
            fits += [resources.get("GPU", 0) // num_gpus] if num_gpus else []
            jobs = int(min(fits)) if fits else 1
        if jobs < 1:
            raise ValueError(f"the Ray cluster has no room for a point with num_cpus={num_cpus}, num_gpus={num_gpus} "
                             f"({ray.cluster_resources()})")
        self.capacity = jobs
        self._task = ray.remote(_ray_attempt)
        self._running: dict[Any, Attempt] = {}

    def prepare(self, out_dir: Path, notebook: Path) -> None:
        hosts = check_shared_storage(out_dir, notebook)
        log.info("ray: %d node(s) see %s: %s", len(hosts), out_dir, ", ".join(hosts))

    def can_start(self) -> bool:
        return len(self._running) < self.capacity

    def start(self, attempt: Attempt) -> Any:
        attempt.placement = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        spec = attempt.spec() | {"threads": max(1, int(self.num_cpus))}
        ref = self._task.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0,
                                 name=f"sweep-point {attempt.name}").remote(spec)
        self._running[ref] = attempt
        return attempt

    def finished(self, timeout: float) -> list[tuple[Any, dict]]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            attempt = self._running.pop(ref)
            try:
                record = self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a lost task or worker is a failed attempt
                record = {"state": "failed", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:500]}",
                          "traceback": str(err)[-6000:]}
            out.append((attempt, record))
        return out

    def stop(self) -> list[Any]:
        refs = list(self._running)
        for ref in refs:
            self.ray.cancel(ref)  # KeyboardInterrupt in the task: papermill shuts its kernel down
        _, still = self.ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE) if refs else ([], [])
        for ref in still:
            self.ray.cancel(ref, force=True)
        return [self._running.pop(ref) for ref in refs]

    def close(self) -> None:
        if self._owns_runtime:  # started here: leave no Ray processes behind
            self.ray.shutdown()
