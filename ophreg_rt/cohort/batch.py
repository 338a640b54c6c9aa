"""Registering a cohort's pairs: resumable results, progress, a summary, and the local engine.

The results file (``results.jsonl`` in the output folder) gets one JSON line per pair, written
as each pair finishes by this (the parent) process only, each line with one ``write`` on an
``O_APPEND`` descriptor followed by ``fsync``. A crash can therefore leave at most a torn last
line; the next run cuts it off before appending, then skips every pair that has a line. A pair
whose images cannot be read, or whose registration raises, gets a line with status ``error``:
it never stops the batch.

A result stands for the pair's content, not only its name: each line records the size and
modification time of both images (``inputs``), and a resumed run re-registers a pair whose
pair_id now names other paths or whose images changed since, dropping the stale line (the file
keeps one line per pair). ``options.json`` records the options and the sha256 of every graph,
so a resume with another graph is refused. One batch at a time writes to a folder: it holds an
exclusive lock (``batch.lock``, released by the kernel however the process ends).

Engines are functions ``(spec, pairs, workers) -> iterator of result lines`` in completion
order. The local engine runs ``workers`` spawned processes, each with its own Registrar (its
own onnxruntime sessions), so the models load once per worker; with one worker it runs in this
process. Both engines (Ray's, ``ray_engine``, too) send a worker whole groups of pairs that
share images (``work_units``), and a worker detects each distinct image of its group once
(``PairRegistrar.register_group``, through a bounded ``DetectionCache``); the local engine's
lines still reach this process pair by pair, as each pair finishes, Ray's group by group.
``WorkerSpec.detection_cache = 0`` (``ophreg batch --no-detection-cache``) is the per-pair path:
single pairs, each detecting both of its images.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import queue
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import DETECTION_CACHE_IMAGES, RegistrarConfig
from ..errors import (BatchFolderError, BatchLockedError, EngineError, InvalidConfigError,
                      ModelError, OphregError)
from ..ransac import STATUS_ERROR  # a pair that could not be attempted (unreadable image, ...)
from .pairing import Pair

RESULTS_FILE = "results.jsonl"
#: The registration options of the batch's first run; a resumed run must ask for the same.
OPTIONS_FILE = "options.json"
#: Held (flock) by the batch writing to the folder; its content is that batch's pid.
LOCK_FILE = "batch.lock"
#: Key of what a worker sends instead of a result when it could not load its models: the whole
#: batch stops (exit 2) rather than filling the results with one error line per pair.
WORKER_FAILED = "worker_failed"

Engine = Callable[["WorkerSpec", list[Pair], int], Iterator[dict]]


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker needs to build its Registrar (picklable: sent to processes and actors)."""

    config: RegistrarConfig
    superpoint: Path | None = None
    matcher_model: Path | None = None  # the learned matcher's graph, None: the default
    #: sha256 by model name of the graphs the workers must load (run_batch fills it in).
    models: dict[str, str] | None = None
    #: Images whose detections a worker keeps for the other pairs of their group (LRU);
    #: 0: none, every pair is sent alone and detects both of its images. Not in options():
    #: results are the same either way (tested), so a resume may change it.
    detection_cache: int = DETECTION_CACHE_IMAGES

    def options(self) -> dict:
        """The settings that decide the results; threads and CPU fall-back do not."""
        settings = asdict(self.config)
        settings.pop("threads"), settings.pop("allow_cpu_fallback")
        # Through JSON and back: compared with what options.json holds, tuples become lists.
        return json.loads(json.dumps({"config": settings,
                                      "superpoint": str(self.superpoint or ""),
                                      "matcher_model": str(self.matcher_model or ""),
                                      "models": self.models},
                                     default=str))

    def graph_hashes(self) -> dict[str, str]:
        """sha256 of each graph these options load, each checked against its manifest."""
        from ..model_files import graphs_to_load
        from ..sessions import verified_sha256

        hashes = {}
        for name, path in graphs_to_load(self.config.features, self.config.matcher,
                                         self.config.precision, self.superpoint,
                                         self.matcher_model).items():
            if not path.is_file():
                raise ModelError(f"{path}: model file not found")
            hashes[name] = verified_sha256(path)
        return hashes


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` processes so that together they fill, and do not
    oversubscribe, the cores (more threads than cores only adds context switches)."""
    return max(1, (cores or available_cores()) // workers)


class PairRegistrar:
    """One worker's state: a Registrar loaded once, then called for many pairs.

    A worker that cannot load its models answers every pair with ``{WORKER_FAILED: message}``
    instead of raising: a multiprocessing pool would respawn a worker whose start-up raises,
    forever, and a Ray actor's start-up error arrives wrapped in Ray's traceback.
    """

    def __init__(self, spec: WorkerSpec):
        from ..registrar import Registrar  # heavy: loads onnxruntime and the graphs

        self.registrar, self.start_error = None, None
        self.cache_capacity = spec.detection_cache
        #: The cache of the current or last group (emptied when the group ends; its counts stay).
        self.cache = None
        try:
            self.registrar = Registrar(spec.config, superpoint_model=spec.superpoint,
                                       matcher_model=spec.matcher_model)
        except OphregError as exc:
            self.start_error = str(exc)
            return
        # A graph replaced between the parent's check and this worker's load (or on another
        # node of a cluster) would give results options.json does not describe.
        for name, sha256 in (spec.models or {}).items():
            loaded = self.registrar.models.get(name, {})
            if loaded.get("sha256") != sha256:
                self.registrar = None
                self.start_error = (f"{loaded.get('file', name)}: sha256 "
                                    f"{loaded.get('sha256')} is not the {sha256} the batch "
                                    "started with (the graph changed meanwhile)")
                return

    def __call__(self, pair: Pair) -> dict:
        if self.registrar is None:
            return {WORKER_FAILED: self.start_error}
        started = time.perf_counter()
        try:
            result = self.registrar.register(pair.fixed_path, pair.moving_path)
            outcome = result.to_json()
        except Exception as exc:  # noqa: BLE001 - one pair's failure must never stop the batch
            message = str(exc) if isinstance(exc, OphregError) else f"{type(exc).__name__}: {exc}"
            outcome = {"status": STATUS_ERROR, "reason": message, "error": type(exc).__name__,
                       "timings_ms": {"total": round((time.perf_counter() - started) * 1e3, 3)}}
        # Both images detected for this pair: the field of a cached line, so that every path
        # writes the same fields.
        return {**result_line(pair, outcome), "detections_cached": [False, False]}

    def register_group(self, pairs: Iterable[Pair]) -> Iterator[dict]:
        """Result lines of ``pairs``, detecting each distinct image once while the cache holds it.

        The lines are those of ``__call__`` (same status, transform, parameters, inliers: the
        same read -> detect -> match -> fit, the detections merely reused), with
        ``detections_cached`` ([fixed, moving]: whether that image's detections came from an
        earlier pair of the group) and timings that count only the reading and detection this
        pair did itself (a pair whose images were both cached has no ``superpoint`` stage).

        Memory: the cache (``DetectionCache``) lives for this call only, holds at most
        ``spec.detection_cache`` images' detections (SuperPoint: <= 1.03 MiB an image at 1024
        keypoints; never the decoded images) and is dropped when the group is done. A group of
        a cohort (one eye and field of one patient) fits it, and its pairs keep their order;
        a larger one is ordered so that each image's pairs come together
        (``cache_friendly_order``), which only costs repeated detections, never results.
        With ``detection_cache`` 0 each pair is ``__call__``.
        """
        from ..detection_cache import DetectionCache, cache_friendly_order

        pairs = list(pairs)
        if self.registrar is None:
            for _ in pairs:
                yield {WORKER_FAILED: self.start_error}
            return
        if self.cache_capacity == 0:
            for pair in pairs:
                yield self(pair)
            return
        self.cache = DetectionCache(self.registrar, self.cache_capacity)
        try:
            order = cache_friendly_order([(p.fixed_path, p.moving_path) for p in pairs],
                                         self.cache_capacity)
            for pair in (pairs[index] for index in order):
                started = time.perf_counter()
                cached = [False, False]
                try:
                    registration = self.cache.register(pair.fixed_path, pair.moving_path)
                    outcome, cached = registration.result.to_json(), registration.cached
                except Exception as exc:  # noqa: BLE001 - as in __call__
                    message = (str(exc) if isinstance(exc, OphregError)
                               else f"{type(exc).__name__}: {exc}")
                    outcome = {"status": STATUS_ERROR, "reason": message,
                               "error": type(exc).__name__,
                               "timings_ms": {"total": round((time.perf_counter() - started)
                                                             * 1e3, 3)}}
                yield {**result_line(pair, outcome), "detections_cached": cached}
        finally:
            self.cache.clear()  # one group's detections at a time, whatever ends the group


def group_pairs(pairs: Iterable[Pair]) -> list[list[Pair]]:
    """The pairs in groups that share images: the connected components of the graph whose
    nodes are image files (resolved paths) and whose edges are the pairs (union-find).

    Groups come in the order of their first pair and keep the pairs' order within them, so a
    pairs file already grouped by eye (as ``ophreg pairs`` writes it) keeps its order.
    """
    pairs = list(pairs)
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    def image(path: Path) -> str:
        try:
            return str(Path(path).resolve())
        except OSError:
            return str(path)

    ends = [(image(pair.fixed_path), image(pair.moving_path)) for pair in pairs]
    for fixed, moving in ends:
        a, b = root(fixed), root(moving)
        if a != b:
            parent[b] = a
    groups: dict[str, list[Pair]] = {}
    for pair, (fixed, _) in zip(pairs, ends):
        groups.setdefault(root(fixed), []).append(pair)
    return list(groups.values())


def work_units(pairs: list[Pair], detection_cache: int) -> list[list[Pair]]:
    """What one worker registers at a time, largest first (a big eye that started last would
    finish alone): the groups of pairs sharing images, or single pairs without a cache."""
    units = group_pairs(pairs) if detection_cache else [[pair] for pair in pairs]
    return sorted(units, key=len, reverse=True)


def result_line(pair: Pair, outcome: dict) -> dict:
    """The pair's identity first, then the CLI contract's fields (or the error)."""
    return {"pair_id": pair.pair_id, "task": pair.task, "dates": pair.row.get("dates", ""),
            "fixed_path": str(pair.fixed_path), "moving_path": str(pair.moving_path), **outcome}


# --- the local engine -------------------------------------------------------------------------

_worker: PairRegistrar | None = None
_lines = None  # the queue of result lines to the parent (a multiprocessing Queue)


def _start_worker(spec: WorkerSpec, lines) -> None:
    global _worker, _lines
    # Ctrl-C reaches the whole process group; the parent alone decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker, _lines = PairRegistrar(spec), lines


def _register_group_in_worker(group: list[Pair]) -> int:
    """Sends each pair's line to the parent as soon as it is done (a crash mid-group loses only
    the unfinished pairs), not the group's lines at its end."""
    assert _worker is not None and _lines is not None, "the pool's initializer builds the worker"
    count = 0
    for line in _worker.register_group(group):
        _lines.put(line)
        count += 1
    return count


def local_engine(spec: WorkerSpec, pairs: list[Pair], workers: int) -> Iterator[dict]:
    spec = replace(spec, config=replace(
        spec.config, threads=spec.config.threads or threads_per_worker(workers)))
    # One group (pairs sharing images) is one unit of work: its images are detected once, by
    # the worker that registers all of its pairs.
    units = work_units(pairs, spec.detection_cache)
    if workers == 1:
        # No process to spawn: the one worker is this process (same sessions, same threads).
        worker = PairRegistrar(spec)
        for unit in units:
            yield from worker.register_group(unit)
        return
    # spawn, not fork: a forked child would inherit onnxruntime's thread pools in a broken state.
    context = multiprocessing.get_context("spawn")
    lines = context.Queue()
    pool = context.Pool(min(workers, len(units)), initializer=_start_worker,
                        initargs=(spec, lines))
    try:
        tasks = [pool.apply_async(_register_group_in_worker, (unit,)) for unit in units]
        for _ in range(len(pairs)):
            while True:
                try:
                    yield lines.get(timeout=1.0)
                    break
                except queue.Empty:
                    for task in tasks:  # a group that raised would never send its lines
                        if task.ready() and not task.successful():
                            task.get()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# --- the results file ---------------------------------------------------------------------------

class ResultsLog:
    """``results.jsonl``: append-only, one line per finished pair, repaired before each run."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        """Every complete line; a torn last line (a crash mid-write) is cut off the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records, good_end, position = [], 0, 0
        while position < len(data):
            newline = data.find(b"\n", position)
            end = len(data) if newline < 0 else newline + 1
            try:
                record = json.loads(data[position:end]) if newline >= 0 else None
            except ValueError:
                record = None
            if not isinstance(record, dict) or "pair_id" not in record:
                if end < len(data):  # only the last line can be torn by a crash
                    line = data.count(b"\n", 0, position) + 1
                    raise BatchFolderError(f"{self.path}: line {line} is not a result; the file was "
                                          "changed by something else than ophreg (refusing to append)")
                break
            records.append(record)
            good_end = position = end
        if good_end < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
                os.fsync(handle.fileno())
        return records

    def rewrite(self, records: list[dict]) -> None:
        """Replace the file by ``records``, atomically (a crash leaves the old file or this)."""
        from ..imageio import write_bytes_atomic

        write_bytes_atomic(self.path, b"".join(self._line(record) for record in records))

    @staticmethod
    def _line(record: dict) -> bytes:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def append(self, record: dict) -> None:
        line = self._line(record)
        # 0o666: the umask decides, as for any file the user creates.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --- progress and summary -------------------------------------------------------------------

class Progress:
    """One stderr line: done/total, rate, time left. Redrawn in place on a terminal; elsewhere
    (logs, CI) printed at most every ``interval_s`` so a log stays readable."""

    def __init__(self, total: int, already: int, stream=sys.stderr, interval_s: float = 10.0):
        self.total, self.done, self.failed = total, already, 0
        self.new = 0
        self.stream, self.interval_s = stream, interval_s
        self.started = self.last_print = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, record: dict) -> None:
        self.done += 1
        self.new += 1
        self.failed += record.get("status") != "ok"
        now = time.monotonic()
        if self.tty or now - self.last_print >= self.interval_s or self.done == self.total:
            self.last_print = now
            self.stream.write(("\r" if self.tty else "") + self.line(now)
                              + ("" if self.tty and self.done < self.total else "\n"))
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.new / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} pairs, "
                f"{rate:.2f} pairs/s, {_clock(left)} left, {self.failed} not registered")


def _clock(seconds: float) -> str:
    if math.isnan(seconds):  # no rate yet
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def summary_table(records: Iterable[dict]) -> str:
    """Per task: pairs, registered, refused and errors (with their commonest reasons), median
    inliers of the registered pairs, median and total registration time."""
    by_task: dict[str, list[dict]] = {}
    for record in records:
        by_task.setdefault(str(record.get("task") or "-"), []).append(record)
    header = (f"{'task':<6}{'pairs':>7}{'registered':>12}{'refused':>9}{'errors':>8}"
              f"{'median inliers':>16}{'median s':>10}{'total s':>9}")
    lines = [header]
    reasons = []
    for task in sorted(by_task):
        group = by_task[task]
        status = Counter(record.get("status") for record in group)
        inliers = [r["num_inliers"] for r in group if r.get("status") == "ok"]
        times = [r.get("timings_ms", {}).get("total", 0.0) / 1e3 for r in group]
        lines.append(f"{task:<6}{len(group):>7}{status['ok']:>12}{status['failed']:>9}"
                     f"{status[STATUS_ERROR]:>8}"
                     f"{(statistics.median(inliers) if inliers else float('nan')):>16.0f}"
                     f"{statistics.median(times):>10.2f}{sum(times):>9.1f}")
        for reason, count in Counter(r.get("reason") for r in group
                                     if r.get("status") != "ok").most_common(3):
            reasons.append(f"  task {task}: {count} x {reason}")
    if reasons:
        lines += ["not registered, commonest reasons:"] + reasons
    return "\n".join(lines)


# --- the batch ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchOutcome:
    records: list[dict]  # one per pair of this pairs file, earlier runs' included
    new: int  # registered by this run
    wall_s: float  # this run, models loading included


def run_batch(pairs: list[Pair], out_dir: Path, spec: WorkerSpec, workers: int,
              engine: Engine = local_engine, progress_stream=None) -> BatchOutcome:
    """Register every pair without a current result in ``out_dir``; returns all of their
    results. A result is current when it was computed from the same image paths, sizes and
    modification times as the pair has now (``inputs``)."""
    # Looked up per call, not bound at import: a test runner (or a caller) may swap sys.stderr.
    progress_stream = sys.stderr if progress_stream is None else progress_stream
    if workers < 1:
        raise InvalidConfigError(f"--workers {workers}: must be at least 1")
    spec = replace(spec, models=spec.graph_hashes())
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        _check_same_options(out_dir / OPTIONS_FILE, spec)
        log = ResultsLog(out_dir / RESULTS_FILE)
        inputs = {pair.pair_id: input_fingerprint(pair) for pair in pairs}
        current = {pair.pair_id: pair for pair in pairs}
        records = log.read()
        done = {r["pair_id"]: r for r in records
                if r["pair_id"] in current and _is_current(r, current[r["pair_id"]],
                                                           inputs[r["pair_id"]])}
        stale = [r for r in records if r["pair_id"] in current and r["pair_id"] not in done]
        if stale:
            # One line per pair stays true: the stale lines go before their pairs run again.
            log.rewrite([r for r in records if r["pair_id"] not in current
                         or r["pair_id"] in done])
            changed = sorted({r["pair_id"] for r in stale})
            print(f"{len(changed)} pairs changed since their result (other image paths, or "
                  f"images modified): registering them again ({', '.join(changed[:5])}"
                  f"{', ...' if len(changed) > 5 else ''})", file=progress_stream)
        todo = [pair for pair in pairs if pair.pair_id not in done]
        started = time.monotonic()
        if todo:
            progress = Progress(len(pairs), len(done), progress_stream)
            # closing: an error or Ctrl-C here must stop the engine's workers at once
            with contextlib.closing(engine(spec, todo, min(workers, len(todo)))) as results:
                for record in results:
                    if WORKER_FAILED in record:
                        raise EngineError(f"a worker could not start: {record[WORKER_FAILED]}")
                    record["inputs"] = inputs[record["pair_id"]]
                    log.append(record)
                    done[record["pair_id"]] = record
                    progress.update(record)
    ordered = [done[pair.pair_id] for pair in pairs]
    return BatchOutcome(ordered, len(todo), time.monotonic() - started)


def input_fingerprint(pair: Pair) -> dict:
    """Size and modification time (ns) of the pair's images, taken before it is registered;
    None for an image that cannot be stat'ed (its pair gets an error line)."""
    def stat(path: Path) -> dict | None:
        try:
            found = path.stat()
        except OSError:
            return None
        return {"size": found.st_size, "mtime_ns": found.st_mtime_ns}

    return {"fixed": stat(pair.fixed_path), "moving": stat(pair.moving_path)}


def _is_current(record: dict, pair: Pair, inputs: dict) -> bool:
    return (record.get("fixed_path") == str(pair.fixed_path)
            and record.get("moving_path") == str(pair.moving_path)
            and record.get("inputs") == inputs)


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold the folder's lock for a batch, or refuse at once when another batch holds it.

    flock, not a file's existence: the kernel releases it when the holder ends in any way
    (kill -9 included), so a crash never leaves a folder locked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    path = out_dir / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise BatchLockedError(
                f"{out_dir}: another ophreg batch{f' (pid {holder})' if holder else ''} is "
                "writing its results there; wait for it to finish, or use another --out-dir") \
                from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _check_same_options(path: Path, spec: WorkerSpec) -> None:
    from ..imageio import write_bytes_atomic

    options = spec.options()
    if not path.exists():
        write_bytes_atomic(path, (json.dumps(options, indent=2) + "\n").encode())
        return
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        raise BatchFolderError(f"{path}: not JSON; it records the options of this folder's results")
    if earlier != options:
        changed = _first_difference(earlier, options)
        raise BatchFolderError(f"{path.parent}: its results were computed with other registration "
                              f"options ({changed}); rerun with the same options or use another "
                              "--out-dir")


def _first_difference(earlier, now, prefix: str = "") -> str:
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in sorted(set(earlier) | set(now)):
            if earlier.get(key) != now.get(key):
                return _first_difference(earlier.get(key), now.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: was {earlier!r}, now {now!r}"
