"""The benchmark harness: one summary of timed samples and one way to make a session, so that a
median or a lever means the same in every benchmark script."""

from __future__ import annotations

import pytest

from benchmarks import harness
from ophreg_rt.model_files import default_superpoint


def test_a_summary_is_the_median_and_the_10th_and_90th_percentiles():
    summary = harness.summarise([float(v) for v in range(10, 0, -1)])
    assert summary == {"median_ms": 5.5, "p10_ms": pytest.approx(1.9), "p90_ms": pytest.approx(9.1),
                       "n": 10}


def test_round_robin_timing_drops_the_warm_up_and_keeps_each_runs_own_stages():
    calls = []
    timed = harness.alternate({"a": lambda: calls.append("a") or {"stage": 2.0},
                               "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4
    assert timed["a"]["stage"] == {"median_ms": 2.0, "p10_ms": 2.0, "p90_ms": 2.0, "n": 3}
    assert timed["a"]["total"]["n"] == timed["b"]["total"]["n"] == 3
    assert set(timed["b"]) == {"total"}


def test_a_session_changes_only_the_lever_asked_for():
    engine_like = harness.session(default_superpoint(), 1).get_session_options()
    assert not engine_like.enable_mem_pattern and engine_like.enable_cpu_mem_arena
    assert engine_like.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # The INT8 study's figures were measured with onnxruntime's own defaults.
    ort_defaults = harness.session(default_superpoint(), 1, memory_pattern=True,
                                   spinning=None).get_session_options()
    assert ort_defaults.enable_mem_pattern and ort_defaults.intra_op_num_threads == 1
    with pytest.raises(Exception, match="allow_spinning"):
        ort_defaults.get_session_config_entry("session.intra_op.allow_spinning")


def test_only_known_cpu_flags_are_reported():
    assert set(harness.cpu_flags()) <= set(harness.CPU_FLAGS)
    assert harness.cpu_model()
