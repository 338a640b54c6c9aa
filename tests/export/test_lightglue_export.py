"""The LightGlue export proves itself: the v0.1 checkpoint fits the module written from the
paper (every tensor accounted for), the shipped graph is a valid opset-17 graph that follows
the contract, and it gives what PyTorch gives on SuperPoint's own keypoints of a real pair, at
two image sizes and two keypoint counts, with padding.

Tolerances (export/lightglue.py says why, against a float64 run): identical matches;
assignment probabilities and matching scores within 5e-4; log-assignment within 2e-3 where the
probability is >= 1e-4.
Same graph, padded vs trimmed: identical matches, scores within 1e-5. All-True masks vs the
unmasked computation (PyTorch): bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import MODELS_DIR, WEIGHTS_DIR, _missing

from export import lightglue as lg
from export.common import load_checkpoint, sha256_file
from export.settings import LightGlueSettings
from ophreg_rt.contract import (
    LIGHTGLUE_INPUTS,
    LIGHTGLUE_OUTPUTS,
    OPSET,
    REQUIRED_METADATA,
    LightGlueIO,
    MetaKey,
    ModelKind,
    decode_metadata,
)

pytestmark = pytest.mark.export

GRAPH = MODELS_DIR / "lightglue.onnx"
REAL_PAIR = "pairs/varia_R067_R118"
#: (width, height) and slots per image: at 512x512 every keypoint (215 / 226) padded to
#: 300 / 280 slots; at 640x480 the 128 / 160 best, no padding.
REAL_CASES = (((512, 512), (300, 280)), ((640, 480), (128, 160)))
#: Measured: 165 matches of 215 / 226 keypoints at 512x512 (153 fit one affine map); the
#: 128 / 160 best at 640x480 give about 100. A broken graph gives far fewer or different ones.
MIN_REAL_MATCHES = {(300, 280): 140, (128, 160): 70}
SAME_GRAPH_TOLERANCE = 1e-5
MA0, MA1 = LightGlueIO.MATCHES


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lightglue_weights():
    path = WEIGHTS_DIR / "superpoint_lightglue.pth"
    if not path.is_file():
        _missing(f"LightGlue checkpoint not found at {path} (set OPHREG_WEIGHTS_DIR)")
    return path


@pytest.fixture(scope="session")
def model(lightglue_weights):
    return lg.load_lightglue(lightglue_weights)


@pytest.fixture(scope="session")
def session():
    return lg.onnx_session(GRAPH, threads=1)


@pytest.fixture(scope="session")
def real_features(data_dir, superpoint_weights):
    """SuperPoint's own (PyTorch) outputs on the real pair, per size: one tuple per image."""
    from export.superpoint import load_grey, load_superpoint

    detector = load_superpoint(superpoint_weights)
    features = {}
    for size, _ in REAL_CASES:
        images = np.stack([load_grey(data_dir / REAL_PAIR / name, size)
                           for name in ("fixed.pgm", "moving.pgm")])[:, None]
        with torch.no_grad():
            outputs = [t.numpy() for t in detector(torch.from_numpy(images))]
        features[size] = [tuple(o[i:i + 1] for o in outputs) for i in range(2)]
    return features


# ---------------------------------------------------------------------------------------------
# The checkpoint


def test_v01_checkpoint_fits_the_module_and_every_tensor_is_accounted_for(lightglue_weights):
    state = load_checkpoint(lightglue_weights)
    report = lg.checkpoint_report(state)
    assert report.loads_strictly, report
    assert len(state) == 260 and len(report.used) + len(report.unused) == 260
    # Unused: the 8 early-exit assignment heads (5 tensors each), the 8 token-confidence
    # classifiers (2 each), and the last head's r; nothing else.
    assert len(report.unused) == 8 * 5 + 8 * 2 + 1
    assert {k for k in report.unused if k.startswith("log_assignment.8")} == {"log_assignment.8.r"}
    assert all(float(state[f"log_assignment.{i}.r"]) == 1.0 for i in range(9))
    assert state["posenc.Wr.weight"].shape == (32, 2)  # 32 frequencies for 64-d heads
    assert not any(k.startswith("input_proj") for k in state)  # 256-d descriptors: no projection


def test_every_used_weight_reaches_the_graph(lightglue_weights):
    """The graph's weight tensors (>= 32 values; below that the exporter may fold scalars into
    constants) hold exactly as many values as the used ones of the checkpoint: every used
    tensor is in, and none of the unused early-exit tensors (they would add 530,432)."""
    state = load_checkpoint(lightglue_weights)
    report = lg.checkpoint_report(state)
    used = sum(state[k].numel() for k in report.used if state[k].numel() >= 32)
    proto = onnx.load(GRAPH)
    in_graph = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if np.prod(t.dims) >= 32)
    assert in_graph == used


# ---------------------------------------------------------------------------------------------
# The shipped graph


def test_graph_passes_full_check_at_contract_opset_with_contract_io():
    proto = onnx.load(GRAPH)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert GRAPH.stat().st_size < 60e6
    for values, specs in ((proto.graph.input, LIGHTGLUE_INPUTS),
                          (proto.graph.output, LIGHTGLUE_OUTPUTS)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs):
            tensor_type = value.type.tensor_type
            assert onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) == np.dtype(spec.dtype)
            assert tuple(d.dim_param or d.dim_value for d in tensor_type.shape.dim) == spec.shape


def test_graph_carries_no_trace_notes_so_the_file_depends_only_on_the_computation():
    proto = onnx.load(GRAPH)
    assert not any(node.metadata_props for node in proto.graph.node)


def test_metadata_and_manifest_record_the_checkpoint_and_settings(session, lightglue_weights):
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map, ModelKind.LIGHTGLUE,
                           str(GRAPH))
    assert set(meta) == set(REQUIRED_METADATA[ModelKind.LIGHTGLUE])
    assert meta[MetaKey.FILTER_THRESHOLD] == LightGlueSettings().filter_threshold == 0.1
    assert meta[MetaKey.NUM_LAYERS] == 9
    assert meta[MetaKey.WEIGHTS_SHA256] == sha256_file(lightglue_weights)
    entry, = [e for e in json.loads((MODELS_DIR / "manifest.json").read_text())["graphs"]
              if e["file"] == GRAPH.name]
    assert entry["sha256"] == sha256_file(GRAPH)
    assert entry["source_sha256"] == sha256_file(lightglue_weights)


# ---------------------------------------------------------------------------------------------
# onnxruntime vs PyTorch


@pytest.mark.parametrize("size,keep", REAL_CASES, ids=["512x512-all-padded", "640x480-128-160"])
def test_onnx_matches_torch_on_superpoint_keypoints_of_a_real_pair(session, model, real_features,
                                                                   size, keep):
    feeds = lg.superpoint_feeds(*real_features[size], size, keep)
    if keep == (300, 280):
        assert not feeds[LightGlueIO.MASK[0]].all() and not feeds[LightGlueIO.MASK[1]].all()
    figures = lg.parity(session, model, feeds, f"{REAL_PAIR} {size}")
    assert figures.ok, figures.line()
    assert figures.counts["matches"] >= MIN_REAL_MATCHES[keep], figures.line()


def test_padding_changes_nothing_for_real_keypoints(session, real_features):
    size = (512, 512)
    valid = [int(f[3].sum()) for f in real_features[size]]
    trimmed = lg.run_onnx(session, lg.superpoint_feeds(*real_features[size], size, valid))
    padded = lg.run_onnx(session, lg.superpoint_feeds(*real_features[size], size, (300, 280)))
    np.testing.assert_array_equal(padded[MA0][:, :valid[0]], trimmed[MA0])
    np.testing.assert_array_equal(padded[MA1][:, :valid[1]], trimmed[MA1])
    assert (padded[MA0][:, valid[0]:] == -1).all() and (padded[MA1][:, valid[1]:] == -1).all()
    for i, n in enumerate(valid):
        name = LightGlueIO.MATCHING_SCORES[i]
        np.testing.assert_allclose(padded[name][:, :n], trimmed[name], atol=SAME_GRAPH_TOLERANCE)


def test_all_true_masks_are_exactly_the_unmasked_computation(model, real_features):
    size = (640, 480)
    feeds = lg.superpoint_feeds(*real_features[size], size, (64, 80))
    assert feeds[LightGlueIO.MASK[0]].all() and feeds[LightGlueIO.MASK[1]].all()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        masked = model.match(t["keypoints0"], t["descriptors0"], t["image_size0"],
                             t["keypoints1"], t["descriptors1"], t["image_size1"],
                             t["mask0"], t["mask1"])
        plain = model.match(t["keypoints0"], t["descriptors0"], t["image_size0"],
                            t["keypoints1"], t["descriptors1"], t["image_size1"])
    for a, b in zip(masked, plain):
        assert torch.equal(a, b)


def test_image_without_keypoints_matches_nothing_and_gives_no_nan(session, real_features):
    size = (640, 480)
    feeds = lg.superpoint_feeds(*real_features[size], size, (40, 30))
    feeds[LightGlueIO.MASK[1]][:] = False
    out = lg.run_onnx(session, feeds)
    assert (out[MA0] == -1).all() and (out[MA1] == -1).all()
    assert all(np.isfinite(v).all() for v in out.values())


# ---------------------------------------------------------------------------------------------
# Pieces of the architecture whose layout the weights depend on


def test_rotary_encoding_makes_self_attention_depend_on_relative_positions_only(model):
    """Shifting every keypoint by the same offset leaves the query-key products unchanged."""
    rng = np.random.default_rng(0)
    positions = torch.from_numpy(rng.uniform(-0.5, 0.5, (1, 20, 2)).astype(np.float32))
    q = torch.from_numpy(rng.normal(size=(1, 4, 20, 64)).astype(np.float32))
    k = torch.from_numpy(rng.normal(size=(1, 4, 20, 64)).astype(np.float32))

    def products(p):
        cos, sin = model.posenc(p)
        return lg.rotate_pairs(q, cos, sin) @ lg.rotate_pairs(k, cos, sin).transpose(-1, -2)

    with torch.no_grad():
        torch.testing.assert_close(products(positions), products(positions + 0.3),
                                   atol=2e-4, rtol=1e-4)
        assert (products(positions) - products(positions * 1.5)).abs().max() > 1e-2


def test_keypoints_are_normalised_to_the_longer_side_about_the_centre():
    keypoints = torch.tensor([[[0.0, 0.0], [640.0, 480.0], [320.0, 240.0]]])
    normalised = lg.normalize_keypoints(keypoints, torch.tensor([[640.0, 480.0]]))
    torch.testing.assert_close(normalised, torch.tensor([[[-1.0, -0.75], [1.0, 0.75], [0.0, 0.0]]]))


def test_log_sigmoid_is_finite_where_log_of_sigmoid_underflows():
    x = torch.tensor([-200.0, -20.0, 0.0, 20.0])
    torch.testing.assert_close(lg.log_sigmoid(x), torch.nn.functional.logsigmoid(x))
    assert torch.isfinite(lg.log_sigmoid(x)).all()
