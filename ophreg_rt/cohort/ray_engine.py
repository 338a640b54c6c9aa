"""The batch on a Ray cluster (``pip install "ophreg-rt[cluster]"``): same pairs, same lines.

Why Ray: a cohort batch is stateful inference (each worker holds onnxruntime sessions that take
seconds to load) over many small, independent tasks; Ray's actors are exactly long-lived
stateful workers with a CPU reservation each, its scheduler places them across machines, and a
local cluster starts in-process for tests. Dask or Spark would need the models reloaded per task
or a hand-made actor layer. Only this module imports ray, and only when ``--engine ray`` is used.

The driver (this process) keeps the results file, the resume and the progress of
``batch.run_batch``; the actors only register pairs and return their result lines. Images are
read by the actors, so every node must see the pairs file's paths (a shared file system) and
have ophreg-rt installed.

One task is one unit of ``batch.work_units``, as in the local engine: a group of pairs sharing
images, whose actor detects each image once (``PairRegistrar.register_group``, the same
bounded cache), or a single pair with ``--no-detection-cache``. A task returns its group's
lines together, so a failure mid-group loses that group's finished pairs too (a resume
registers them again); a group is one eye's handful of pairs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import replace

from ..errors import EngineError, InvalidConfigError
from .batch import PairRegistrar, WorkerSpec, work_units
from .pairing import Pair

EXTRA = "cluster"


def _import_ray():
    try:
        import ray
        import ray.exceptions
        from ray.util import ActorPool
    except ImportError:
        raise InvalidConfigError(f"--engine ray needs Ray, which is not installed: "
                          f"pip install \"ophreg-rt[{EXTRA}]\"") from None
    return ray, ActorPool


class _PairActor:
    """Made a Ray actor by ``ray.remote`` at run time, so that this module imports without Ray."""

    def __init__(self, spec: WorkerSpec):
        self._worker = PairRegistrar(spec)

    def register_group(self, pairs: list[Pair]) -> list[dict]:
        return list(self._worker.register_group(pairs))


def actor_threads(ray, workers: int) -> int:
    """Threads per actor when not asked: the smallest node's CPUs shared by the actors it may
    have to hold, so that every actor can be placed and none oversubscribes its node."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    node_cpus = min(int(node["Resources"].get("CPU", 1)) for node in nodes) if nodes else 1
    return max(1, node_cpus // math.ceil(workers / max(len(nodes), 1)))


def ray_engine(spec: WorkerSpec, pairs: list[Pair], workers: int) -> Iterator[dict]:
    ray, ActorPool = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # A local cluster unless RAY_ADDRESS names one; never report usage over the network.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot start or reach a Ray cluster: {exc}") from None
    threads = spec.config.threads or actor_threads(ray, workers)
    spec = replace(spec, config=replace(spec.config, threads=threads))
    actor_class = ray.remote(num_cpus=threads)(_PairActor)
    units = work_units(pairs, spec.detection_cache)
    # No idle actor: each one holds its CPUs and loads the models for nothing.
    actors = [actor_class.remote(spec) for _ in range(min(workers, len(units)))]
    try:
        for lines in ActorPool(actors).map_unordered(
                lambda actor, unit: actor.register_group.remote(unit), units):
            yield from lines
    except ray.exceptions.RayError as exc:  # e.g. a node lost: the finished pairs are kept
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"the Ray cluster failed ({first_line}); run the same command again "
                          "to resume") from None
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
