"""``ophreg batch`` on a synthetic cohort: every pair once, the true transforms, errors that do not
stop it, a resume after SIGKILL, and the same results with two worker processes and on a local
Ray cluster (2 CPUs, no dashboard, loopback only)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CC0_RETINA, REQUIRE_SHARED

from benchmarks.synthetic_cohort import write_cohort
from ophreg_rt.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from ophreg_rt.cohort.batch import ResultsLog, WorkerSpec, run_batch, threads_per_worker
from ophreg_rt.cohort.report import write_outputs
from ophreg_rt.config import RegistrarConfig
from ophreg_rt.cohort.pairing import pairs_csv, read_pairs
from ophreg_rt.errors import BatchFolderError, InvalidConfigError
from ophreg_rt.transforms import apply, fitted_from_json, map_points

#: Small network input, and one intra-op thread in every engine so that the sessions' arithmetic
#: is the same and results compare exactly.
OPTIONS = ["--size", "256", "--threads", "1"]
#: Small images keep a registration near 0.3 s on this machine's 2 cores.
IMAGE_WIDTH = 320


@pytest.fixture(scope="session")
def cohort(data_dir, tmp_path_factory):
    """Two eyes (one healthy, one diseased) of two real images: 13 pairs over tasks 1-3."""
    folder = tmp_path_factory.mktemp("cohort")
    sources = [CC0_RETINA, data_dir / "single" / "drive_training" / "21_training.tif"]
    synthetic = write_cohort(folder, sources, width=IMAGE_WIDTH, seed=5)
    assert main(["pairs", str(synthetic.manifest), "--out", str(folder / "pairs.csv")]) == EXIT_OK
    return synthetic, folder / "pairs.csv"


@pytest.fixture(scope="session")
def few_pairs(cohort, tmp_path_factory):
    """Two pairs of each task: enough to compare engines, cheap enough to run three times."""
    pairs = read_pairs(cohort[1])
    chosen = [p for task in "123" for p in [q for q in pairs if q.task == task][:2]]
    path = tmp_path_factory.mktemp("few") / "pairs.csv"
    path.write_text(pairs_csv(chosen))
    return path


@pytest.fixture(scope="session")
def one_worker_results(few_pairs, tmp_path_factory):
    """The reference: the local engine, one worker, in this process."""
    out = tmp_path_factory.mktemp("one_worker")
    main(["batch", str(few_pairs), "--out-dir", str(out), *OPTIONS])
    return read_results(out)


def read_results(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_id = {record["pair_id"]: record for record in records}
    assert len(by_id) == len(records), "a pair has more than one result"
    return by_id


def same_results(first: dict[str, dict], second: dict[str, dict]) -> None:
    """Equal outcomes pair by pair; only timings and which detections were reused may differ
    (Ray's engine detects both images of every pair)."""
    assert first.keys() == second.keys()
    for pair_id, record in first.items():
        a, b = dict(record), dict(second[pair_id])
        for key in ("timings_ms", "detections_cached"):
            a.pop(key), b.pop(key)
        assert a == b, pair_id


#: A registered pair must agree with the known transform within RANSAC's own inlier threshold
#: (px at 1024): a swapped fixed/moving or a wrong pairing is off by tens of pixels.
TRUTH_TOLERANCE_PX = 4.0
CONTRACT_FIELDS = {"status", "reason", "affine", "num_keypoints", "num_matches", "num_inliers",
                   "timings_ms", "models", "provider"}


def transfer_error(record: dict, truth, size) -> float:
    """Mean distance, px at 1024, between where a result line's transform (any model) and the
    truth send the central half of the image."""
    width, height = size
    ys, xs = np.mgrid[height // 4:3 * height // 4:8, width // 4:3 * width // 4:8]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    estimate = map_points(*fitted_from_json(record), points)
    distance = np.linalg.norm(estimate - apply(truth, points), axis=1)
    return float(distance.mean() * 1024 / max(size))


def test_every_pair_gets_one_result_with_the_true_transform(cohort, tmp_path, capsys):
    synthetic, pairs_file = cohort
    code = main(["batch", str(pairs_file), "--out-dir", str(tmp_path), *OPTIONS])
    results = read_results(tmp_path)
    pairs = read_pairs(pairs_file)
    assert results.keys() == {p.pair_id for p in pairs}
    assert code == (EXIT_OK if all(r["status"] == "ok" for r in results.values()) else EXIT_FAILED)
    assert all(results[p.pair_id]["status"] == "ok" for p in pairs if p.task in ("1", "2"))
    for pair in pairs:
        record = results[pair.pair_id]
        assert CONTRACT_FIELDS <= record.keys()
        assert (record["task"], record["fixed_path"]) == (pair.task, str(pair.fixed_path))
        if record["status"] == "ok":
            truth = synthetic.truth(pair.fixed_path, pair.moving_path)
            assert transfer_error(record, truth, record["fixed_size"]) < \
                TRUTH_TOLERANCE_PX, pair.row
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:5] == ["task", "pairs", "registered", "refused", "errors"]
    assert [line.split()[0] for line in table.splitlines()[1:4]] == ["1", "2", "3"]


def test_unreadable_images_fail_their_pairs_not_the_batch(cohort, tmp_path, capsys):
    good = read_pairs(cohort[1])[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("pair_id,task,fixed_path,moving_path\n"
                          f"corrupt,1,{good.fixed_path},corrupt.png\n"
                          f"missing,1,{good.fixed_path},missing.png\n"
                          f"good,1,{good.fixed_path},{good.moving_path}\n")
    out = tmp_path / "out"
    assert main(["batch", str(pairs_file), "--out-dir", str(out), *OPTIONS]) == EXIT_FAILED
    results = read_results(out)
    assert results["good"]["status"] == "ok"
    for pair_id, problem in (("corrupt", "not an image OpenCV can decode"),
                             ("missing", "no such file")):
        assert results[pair_id]["status"] == "error"
        assert results[pair_id]["reason"].startswith(str(tmp_path / f"{pair_id}.png"))
        assert problem in results[pair_id]["reason"]
    assert "task 1: 1 x" in capsys.readouterr().out


def test_a_torn_last_line_is_cut_and_a_changed_file_refused(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append({"pair_id": "a", "status": "ok"})
    with open(log.path, "ab") as handle:
        handle.write(b'{"pair_id": "b", "sta')  # a crash in the middle of a write
    assert [r["pair_id"] for r in log.read()] == ["a"]
    assert log.path.read_bytes() == b'{"pair_id":"a","status":"ok"}\n'
    log.path.write_bytes(b"garbage\n" + log.path.read_bytes())
    with pytest.raises(BatchFolderError, match="line 1 is not a result"):
        log.read()


def test_folder_and_option_errors_have_their_types(tmp_path):
    """A caller of the library catches what it can act on (all of them are OphregError and
    exit 2 from the command line)."""
    with pytest.raises(InvalidConfigError, match="--workers 0: must be at least 1"):
        run_batch([], tmp_path / "out", WorkerSpec(RegistrarConfig()), workers=0)
    with pytest.raises(BatchFolderError, match="no results.jsonl"):
        write_outputs(tmp_path)
    (tmp_path / "results.jsonl").write_bytes(b"")
    with pytest.raises(BatchFolderError, match="no results yet"):
        write_outputs(tmp_path)


def test_a_killed_batch_resumes_to_exactly_one_result_per_pair(cohort, tmp_path):
    pairs_file = cohort[1]
    out = tmp_path / "out"
    results = out / "results.jsonl"
    command = [sys.executable, "-m", "ophreg_rt.cli", "batch", str(pairs_file),
               "--out-dir", str(out), *OPTIONS]
    # Its own session, so that the kill reaches every process of the batch, as a crash would.
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline, "no result within two minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    total = len(read_pairs(pairs_file))
    finished_before = results.read_bytes().count(b"\n")
    assert 1 <= finished_before < total
    with open(results, "ab") as handle:  # and as if the kill had landed mid-write
        handle.write(b'{"pair_id": "')

    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode in (EXIT_OK, EXIT_FAILED), rerun.stderr
    lines = results.read_text().splitlines()
    assert len(lines) == total
    assert {json.loads(line)["pair_id"] for line in lines} == {p.pair_id for p in
                                                                read_pairs(pairs_file)}
    assert f"{total - finished_before} pairs processed by this run" in rerun.stderr
    assert f"({finished_before} already done)" in rerun.stderr


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(cohort, tmp_path):
    # The whole cohort, not few_pairs: with 6 pairs the other 5 could finish between the first
    # result line and the signal (seen in CI once the engine got faster), leaving nothing to stop.
    pairs_file = cohort[1]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ophreg_rt.cli", "batch", str(pairs_file),
               "--out-dir", str(out), "--workers", "2", *OPTIONS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "run the same command again" in err, err
    assert "Traceback" not in err
    assert results.read_bytes().count(b"\n") < len(read_pairs(pairs_file))
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert rerun.returncode in (EXIT_OK, EXIT_FAILED), rerun.stderr
    assert read_results(out).keys() == {p.pair_id for p in read_pairs(pairs_file)}


def test_two_worker_processes_give_the_results_of_one(few_pairs, one_worker_results, tmp_path):
    main(["batch", str(few_pairs), "--out-dir", str(tmp_path), "--workers", "2", *OPTIONS])
    same_results(one_worker_results, read_results(tmp_path))


def test_a_resume_with_other_options_is_refused(few_pairs, tmp_path, capsys):
    one_pair = tmp_path / "pairs.csv"
    one_pair.write_text("\n".join(few_pairs.read_text().splitlines()[:2]) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(one_pair), "--out-dir", str(out), *OPTIONS]) == EXIT_OK
    capsys.readouterr()
    assert main(["batch", str(one_pair), "--out-dir", str(out), "--size", "320"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "other registration options" in err and "size" in err


@pytest.mark.parametrize("graph_option", [["--superpoint"], ["--matcher", "lightglue",
                                                               "--lightglue"]])
def test_workers_that_cannot_load_their_model_stop_the_batch_with_one_line(few_pairs, tmp_path,
                                                                           graph_option):
    not_a_graph = tmp_path / "graph.onnx"
    not_a_graph.write_bytes(b"not an onnx graph")
    run = subprocess.run([sys.executable, "-m", "ophreg_rt.cli", "batch", str(few_pairs),
                          "--out-dir", str(tmp_path / "out"), "--workers", "2",
                          *graph_option, str(not_a_graph), *OPTIONS],
                         check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "a worker could not start" in run.stderr and str(not_a_graph) in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_threads_per_worker_never_oversubscribe_the_cores():
    assert [threads_per_worker(w, cores=8) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


@pytest.fixture(scope="module")
def local_cluster():
    if importlib.util.find_spec("ray") is None:
        message = "ray is not installed (the 'cluster' extra)"
        if REQUIRE_SHARED:  # CI installs the extra: the distributed path must run there
            pytest.fail(message + " and OPHREG_REQUIRE_SHARED=1", pytrace=False)
        pytest.skip(message)
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="WARNING", log_to_driver=False)
        yield ray
        ray.shutdown()


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_results(local_cluster, few_pairs,
                                                     one_worker_results, tmp_path):
    main(["batch", str(few_pairs), "--out-dir", str(tmp_path), "--engine", "ray",
          "--workers", "2", *OPTIONS])
    same_results(one_worker_results, read_results(tmp_path))
    assert local_cluster.is_initialized()  # the engine leaves a cluster it did not start


def test_without_ray_the_error_names_the_extra(few_pairs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code = main(["batch", str(few_pairs), "--out-dir", str(tmp_path), "--engine", "ray",
                 *OPTIONS])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert 'pip install "ophreg-rt[cluster]"' in err and "Traceback" not in err
