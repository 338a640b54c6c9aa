"""The runtime's LightGlue path: the shipped graph loads through the contract, the runner
returns the graph's matches, the registrar and ``ophreg register --matcher lightglue`` register
a known warp of a real image, and a wrong or missing graph is refused in one line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.known_truth import SUCCESS_PX, make_cases, mean_fov_error
from conftest import CC0_RETINA, MODELS_DIR
from export.settings import LightGlueSettings
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.config import MatcherName
from ophreg_rt.contract import LightGlueIO
from ophreg_rt.errors import ContractMismatchError
from ophreg_rt.imageio import write_image
from ophreg_rt.matching import LightGlueRunner
from ophreg_rt.model_files import LIGHTGLUE_FILE, default_matcher_graph, default_superpoint
from ophreg_rt.types import Features

#: The network input of these tests: a quarter of the method's pixels keeps them quick; the
#: CC0 retina still gives a few hundred keypoints there.
SIZE = (512, 512)


@pytest.fixture(scope="module")
def runner():
    return LightGlueRunner(default_matcher_graph(MatcherName.LIGHTGLUE), threads=1)


@pytest.fixture(scope="module")
def case():
    return make_cases([CC0_RETINA], per_image=1, seed=11)[0]


@pytest.fixture(scope="module")
def registrar():
    config = replace(RegistrarConfig(), matcher=MatcherName.LIGHTGLUE, threads=1)
    return Registrar(replace(config, preprocess=replace(config.preprocess, size=SIZE)))


def test_default_graph_is_the_shipped_file_and_matches_its_manifest_entry():
    path = default_matcher_graph(MatcherName.LIGHTGLUE)
    assert path.name == LIGHTGLUE_FILE and path.is_file()
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    (entry,) = [g for g in manifest["graphs"] if g["file"] == LIGHTGLUE_FILE]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


def test_runner_reads_the_filter_threshold_from_the_graph(runner):
    assert runner.filter_threshold == LightGlueSettings().filter_threshold


def test_runner_returns_the_graphs_mutual_matches_above_the_threshold(runner, registrar, case):
    fixed, moving = registrar.detect([case.fixed, case.moving])
    matches = runner(fixed.features, moving.features, SIZE, SIZE)
    assert len(matches) >= 100
    assert (matches.scores > runner.filter_threshold).all() and (matches.scores <= 1).all()
    # One partner per keypoint on both sides.
    assert len(np.unique(matches.pairs[:, 0])) == len(np.unique(matches.pairs[:, 1])) == len(matches)
    # The same as the graph's own output with the features padded to more slots.
    feeds = {}
    for i, f in enumerate((fixed.features, moving.features)):
        n = len(f) + 17
        feeds[LightGlueIO.KEYPOINTS[i]] = np.full((1, n, 2), -1, np.float32)
        feeds[LightGlueIO.KEYPOINTS[i]][0, :len(f)] = f.keypoints
        feeds[LightGlueIO.DESCRIPTORS[i]] = np.zeros((1, n, 256), np.float32)
        feeds[LightGlueIO.DESCRIPTORS[i]][0, :len(f)] = f.descriptors
        feeds[LightGlueIO.MASK[i]] = np.arange(n)[None] < len(f)
        feeds[LightGlueIO.IMAGE_SIZE[i]] = np.array([SIZE], np.float32)
    matches0, = runner.model.session.run([LightGlueIO.MATCHES[0]], feeds)
    index0 = np.flatnonzero(matches0[0] >= 0)
    np.testing.assert_array_equal(matches.pairs, np.stack([index0, matches0[0, index0]], 1))


def test_no_keypoints_on_one_side_gives_no_matches(runner):
    empty = Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                     np.zeros((0, 256), np.float32))
    some = Features(np.array([[10.0, 20.0]], np.float32), np.ones(1, np.float32),
                    np.eye(1, 256, dtype=np.float32))
    assert len(runner(empty, some, SIZE, SIZE)) == 0
    assert len(runner(some, empty, SIZE, SIZE)) == 0


def test_registrar_with_lightglue_registers_a_known_warp(registrar, case):
    result = registrar.register(case.fixed, case.moving)
    assert result.ok, result.reason
    assert result.matcher == MatcherName.LIGHTGLUE.value
    assert set(result.models) == {"superpoint", "lightglue"}
    assert mean_fov_error(result, case) < SUCCESS_PX


def test_a_superpoint_graph_is_refused_as_lightglue_naming_the_file():
    with pytest.raises(ContractMismatchError, match="superpoint.onnx.*expected a lightglue graph"):
        LightGlueRunner(default_superpoint())


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("pair")
    write_image(folder / "fixed.png", case.fixed)
    write_image(folder / "moving.png", case.moving)
    return folder / "fixed.png", folder / "moving.png"


def test_cli_matcher_lightglue_registers_and_reports_the_graph(pair_files, tmp_path):
    out = tmp_path / "result.json"
    code = main(["register", str(pair_files[0]), str(pair_files[1]), "--matcher", "lightglue",
                 "--size", str(SIZE[0]), "--threads", "1", "--json", str(out)])
    assert code == EXIT_OK
    document = json.loads(out.read_text())
    assert document["status"] == "ok" and document["matcher"] == "lightglue"
    assert document["models"]["lightglue"]["file"] == LIGHTGLUE_FILE


def test_cli_missing_lightglue_graph_exits_2_naming_it(pair_files, tmp_path, capsys):
    missing = tmp_path / "nowhere.onnx"
    code = main(["register", str(pair_files[0]), str(pair_files[1]), "--matcher", "lightglue",
                 "--lightglue", str(missing)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nowhere.onnx" in err and "not found" in err


def test_lightglue_is_superpoints_default_matcher_and_sift_keeps_its_ratio_test():
    from ophreg_rt.config import DEFAULT_MATCHERS, FeatureName, resolved_matcher

    assert RegistrarConfig().matcher is None
    assert resolved_matcher(FeatureName.SUPERPOINT, None) is MatcherName.LIGHTGLUE
    assert resolved_matcher(FeatureName.SIFT, None) is MatcherName.MNN
    assert resolved_matcher(FeatureName.SUPERPOINT, MatcherName.MNN) is MatcherName.MNN
    assert set(DEFAULT_MATCHERS) == set(FeatureName)
    registrar = Registrar(replace(RegistrarConfig(), threads=1))
    assert registrar.lightglue is not None and registrar.matcher_name == "lightglue"
    assert "lightglue" in registrar.models
