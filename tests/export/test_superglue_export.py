"""The SuperGlue export proves itself: a valid opset-17 graph that follows the contract, loads
Magic Leap's checkpoint format, honours the keypoint masks, and gives what PyTorch gives on
SuperPoint's own keypoints of a real pair, at two image sizes and two keypoint counts.

Trained SuperGlue weights are not available (../shared/weights/README.md), so everything runs
on random weights of the architecture (export.superglue.random_superglue, seed 0; its docstring
says why its final projection is drawn orthogonal with gain sqrt(256)).

Tolerances, and why:

* onnxruntime vs PyTorch: identical matches; log-assignment within 1e-3. Both run the same
  float32 weights and differ only in summation order (~1e-7 relative per op), carried through
  18 residual attention layers into scores of magnitude ~50 and 100 log-sum-exp iterations:
  observed <= 1.5e-4. Any real mistake (head split, keypoint normalisation, marginals) moves
  the log-assignment by O(1) and the matches with it.
* padded vs unpadded, batch of two vs two batches of one (same graph): identical matches;
  log-assignment within 1e-4 (padded slots add exact zeros, but a reduction over more terms
  may be vectorised in a different order).
* all-True masks vs the unmasked algorithm (PyTorch): bit for bit.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ophreg_rt.contract import (  # noqa: E402
    CONTRACT_VERSION,
    OPSET,
    REQUIRED_METADATA,
    SUPERGLUE_INPUTS,
    SUPERGLUE_OUTPUTS,
    MetaKey,
    ModelKind,
    SuperGlueIO,
    decode_metadata,
)

from export import superglue as sg  # noqa: E402
from export.attention import LOG_ZERO, attend, key_mask  # noqa: E402
from export.common import sha256_state_dict  # noqa: E402
from export.parity import synthetic_pair  # noqa: E402
from export.settings import SinkhornDomain, SuperGlueSettings  # noqa: E402

pytestmark = pytest.mark.export

SEED = 0
ORT_TOLERANCE = 1e-3
SAME_GRAPH_TOLERANCE = 1e-4
REAL_PAIR = "pairs/varia_R067_R118"
#: (width, height) of the detector's input and slots kept per image (None: every valid slot).
#: One square size with all keypoints (~220 per image, padding in the image with fewer), one
#: non-square size with the 128 / 160 best, so both keypoint axes are proven dynamic.
REAL_CASES = (((512, 512), None), ((640, 480), (128, 160)))
#: Random weights match 198 of 215 / 226 keypoints on this pair at 512x512 (about 130-150 of
#: them consistent with one affine map) and 124 of the 128 / 160 best at 640x480.
MIN_REAL_MATCHES = {None: 150, (128, 160): 80}
MA0, MA1 = SuperGlueIO.MATCHES
LA = SuperGlueIO.LOG_ASSIGNMENT


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Other suites share the 2 cores; two torch threads fighting for them run 4x slower here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model():
    return sg.random_superglue(SEED)


@pytest.fixture(scope="session")
def graph(tmp_path_factory, model):
    """The graph of the default settings (100 Sinkhorn iterations), exported once."""
    path = tmp_path_factory.mktemp("superglue") / "superglue_random.onnx"
    return sg.export(model, path, sg.random_weights_id(SEED), sha256_state_dict(model.state_dict()))


@pytest.fixture(scope="session")
def session(graph):
    return sg.onnx_session(graph, threads=1)


def run_both(session, model, feeds):
    return sg.run_torch(model, feeds), sg.run_onnx(session, feeds)


def feeds_of(batch_dicts):
    """Stack single-pair feeds into one batch."""
    return {name: np.concatenate([f[name] for f in batch_dicts]) for name in batch_dicts[0]}


def pad(feeds, n0, n1, garbage=None):
    """The same pair with each image padded to n0 / n1 slots (contract padding, or garbage)."""
    out = {}
    for i, n in enumerate((n0, n1)):
        names = (SuperGlueIO.KEYPOINTS[i], SuperGlueIO.SCORES[i], SuperGlueIO.DESCRIPTORS[i],
                 SuperGlueIO.MASK[i])
        fills = (-1.0, 0.0, 0.0, False)
        for name, fill in zip(names, fills):
            value = feeds[name]
            extra = np.full((value.shape[0], n - value.shape[1]) + value.shape[2:], fill,
                            value.dtype)
            if garbage is not None and name != SuperGlueIO.MASK[i]:
                extra = garbage.uniform(-5, 500, extra.shape).astype(value.dtype)
            out[name] = np.concatenate([value, extra], axis=1)
        out[SuperGlueIO.IMAGE_SIZE[i]] = feeds[SuperGlueIO.IMAGE_SIZE[i]]
    return out


# ---------------------------------------------------------------------------------------------
# The graph file


def test_graph_passes_full_onnx_check_at_contract_opset(graph):
    proto = onnx.load(graph)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    # Weights inside the single file: no external data anywhere.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert sum(t.ByteSize() for t in proto.graph.initializer) > 40e6  # 12.0 M float32 weights
    assert sorted(p.name for p in graph.parent.iterdir()) == ["manifest.json", graph.name]


def _nodes(graph_proto):
    for node in graph_proto.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def test_graph_uses_only_default_domain_operators(graph):
    proto = onnx.load(graph)
    foreign = {(n.domain, n.op_type) for n in _nodes(proto.graph)
               if n.domain not in ("", "ai.onnx")}
    assert foreign == set()
    assert not proto.functions


def test_graph_inputs_and_outputs_are_the_contracts(graph):
    proto = onnx.load(graph)
    for values, specs in ((proto.graph.input, SUPERGLUE_INPUTS),
                          (proto.graph.output, SUPERGLUE_OUTPUTS)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs):
            tensor_type = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            assert dtype == np.dtype(spec.dtype), spec.name
            dims = tuple(d.dim_param or d.dim_value for d in tensor_type.shape.dim)
            assert dims == spec.shape, spec.name


def test_metadata_round_trips_and_records_the_default_iterations(graph, session, model):
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map, ModelKind.SUPERGLUE,
                           str(graph))
    defaults = SuperGlueSettings()
    assert set(meta) == set(REQUIRED_METADATA[ModelKind.SUPERGLUE])
    assert meta[MetaKey.SINKHORN_ITERATIONS] == defaults.sinkhorn_iterations == 100
    assert meta[MetaKey.MATCH_THRESHOLD] == defaults.match_threshold
    assert meta[MetaKey.WEIGHTS_FILE] == f"random-init:seed={SEED}"
    assert meta[MetaKey.WEIGHTS_SHA256] == sha256_state_dict(model.state_dict())
    assert meta[MetaKey.OPSET] == OPSET
    assert meta[MetaKey.CONTRACT_VERSION] == CONTRACT_VERSION
    recorded = session.get_modelmeta().custom_metadata_map
    assert recorded["ophreg." + MetaKey.SINKHORN_DOMAIN] == defaults.sinkhorn_domain.value
    entry, = json.loads((graph.parent / "manifest.json").read_text())["graphs"]
    assert entry["file"] == graph.name and entry["model"] == ModelKind.SUPERGLUE
    assert entry["source_checkpoint"] == f"random-init:seed={SEED}"
    assert entry["settings"][MetaKey.SINKHORN_ITERATIONS] == 100


# ---------------------------------------------------------------------------------------------
# onnxruntime vs PyTorch


@pytest.fixture(scope="session")
def real_features(data_dir, superpoint_weights):
    """SuperPoint's own (PyTorch) outputs on the real pair, per size: the contract's inputs."""
    from export.superpoint import load_grey, load_superpoint

    detector = load_superpoint(superpoint_weights)
    features = {}
    for size, _ in REAL_CASES:
        images = np.stack([load_grey(data_dir / REAL_PAIR / name, size)
                           for name in ("fixed.pgm", "moving.pgm")])[:, None]
        with torch.no_grad():
            keypoints, scores, descriptors, mask = detector(torch.from_numpy(images))
        features[size] = [(keypoints[i:i + 1].numpy(), scores[i:i + 1].numpy(),
                           descriptors[i:i + 1].numpy(), mask[i:i + 1].numpy()) for i in range(2)]
    return features


def real_feeds(features, size, keep):
    """Slots 0..n of each image (they are sorted, valid first): every valid one, or ``keep``."""
    valid = [int(f[3].sum()) for f in features]
    counts = (max(valid), max(valid)) if keep is None else keep
    feeds = {}
    for i, ((keypoints, scores, descriptors, mask), n) in enumerate(zip(features, counts)):
        feeds[SuperGlueIO.KEYPOINTS[i]] = keypoints[:, :n]
        feeds[SuperGlueIO.SCORES[i]] = scores[:, :n]
        feeds[SuperGlueIO.DESCRIPTORS[i]] = descriptors[:, :n]
        feeds[SuperGlueIO.MASK[i]] = mask[:, :n]
        feeds[SuperGlueIO.IMAGE_SIZE[i]] = np.array([size], dtype=np.float32)
    return feeds


@pytest.mark.parametrize("size,keep", REAL_CASES, ids=["512x512-all", "640x480-128-160"])
def test_onnx_matches_torch_on_superpoint_keypoints_of_a_real_pair(session, model, real_features,
                                                                   size, keep):
    feeds = real_feeds(real_features[size], size, keep)
    if keep is None:  # the image with fewer keypoints really is padded
        assert not feeds[SuperGlueIO.MASK[0]].all() or not feeds[SuperGlueIO.MASK[1]].all()
    figures = sg.parity(session, model, feeds, f"{REAL_PAIR} {size}")
    assert figures.exact["matches identical"], figures.line()
    assert figures.differences["log_assignment"].value <= ORT_TOLERANCE, figures.line()
    assert figures.counts["matches"] >= MIN_REAL_MATCHES[keep], figures.line()


def test_onnx_matches_torch_on_a_synthetic_padded_batch(session, model):
    # Needs no SuperPoint weights; batch of two, different sizes and padding per element.
    feeds = feeds_of([
        synthetic_pair(96, 80, (640, 480), (640, 480), seed=1, valid0=90, valid1=80),
        synthetic_pair(96, 80, (512, 512), (768, 576), seed=2, valid0=96, valid1=64)])
    figures = sg.parity(session, model, feeds, "synthetic batch")
    assert figures.ok, figures.line()
    assert figures.counts["matches"] >= 40, figures.line()


# ---------------------------------------------------------------------------------------------
# Masks and batches (the graph, which is what the runtime runs)


@pytest.fixture(scope="module")
def small_pair():
    return synthetic_pair(50, 40, (640, 480), (640, 480), seed=3)


@pytest.mark.parametrize("garbage", [False, True], ids=["contract-padding", "garbage-padding"])
def test_padding_changes_nothing_for_real_keypoints(session, small_pair, garbage):
    plain = sg.run_onnx(session, small_pair)
    rng = np.random.default_rng(0) if garbage else None
    padded = sg.run_onnx(session, pad(small_pair, 64, 57, rng))
    assert (plain[MA0] >= 0).sum() >= 15
    np.testing.assert_array_equal(padded[MA0][:, :50], plain[MA0])
    np.testing.assert_array_equal(padded[MA1][:, :40], plain[MA1])
    assert (padded[MA0][:, 50:] == -1).all() and (padded[MA1][:, 40:] == -1).all()
    for i, n in ((0, 50), (1, 40)):
        score = SuperGlueIO.MATCHING_SCORES[i]
        np.testing.assert_allclose(padded[score][:, :n], plain[score], atol=SAME_GRAPH_TOLERANCE)
        assert (padded[score][:, n:] == 0).all()
    # Real block and dustbins are the unpadded ones; padded rows and columns carry no mass.
    la = padded[LA]
    rows, cols = list(range(50)) + [64], list(range(40)) + [57]
    np.testing.assert_allclose(la[:, rows][:, :, cols], plain[LA], atol=SAME_GRAPH_TOLERANCE)
    assert (la[:, 50:64] == LOG_ZERO).all() and (la[:, :, 40:57] == LOG_ZERO).all()


@pytest.mark.parametrize("valid", [(30, 0), (0, 0)], ids=["image1-empty", "both-empty"])
def test_image_without_keypoints_matches_nothing_and_gives_no_nan(session, model, valid):
    feeds = synthetic_pair(30, 20, (640, 480), (640, 480), seed=4,
                              valid0=valid[0], valid1=valid[1])
    assert not feeds[SuperGlueIO.MASK[1]].any()
    for outputs in run_both(session, model, feeds):
        assert (outputs[MA0] == -1).all() and (outputs[MA1] == -1).all()
        for name, value in outputs.items():
            assert np.isfinite(value).all(), name
        assert (outputs[SuperGlueIO.MATCHING_SCORES[0]] == 0).all()
        assert (outputs[SuperGlueIO.MATCHING_SCORES[1]] == 0).all()


def test_batch_of_two_equals_two_single_runs(session):
    first = synthetic_pair(60, 48, (640, 480), (640, 480), seed=5, valid0=55)
    second = synthetic_pair(60, 48, (512, 512), (384, 512), seed=6, valid1=40)
    batched = sg.run_onnx(session, feeds_of([first, second]))
    for index, single in enumerate((first, second)):
        alone = sg.run_onnx(session, single)
        for name in SuperGlueIO.MATCHES:
            np.testing.assert_array_equal(batched[name][index], alone[name][0])
        np.testing.assert_allclose(batched[LA][index], alone[LA][0], atol=SAME_GRAPH_TOLERANCE)
        assert (alone[MA0] >= 0).sum() >= 15


# ---------------------------------------------------------------------------------------------
# The PyTorch module


def test_all_true_masks_are_exactly_the_unmasked_algorithm(model, small_pair):
    t = {k: torch.from_numpy(v) for k, v in small_pair.items()}
    common = (t["keypoints0"], t["scores0"], t["descriptors0"], t["image_size0"],
              t["keypoints1"], t["scores1"], t["descriptors1"], t["image_size1"])
    with torch.no_grad():
        masked = model.match(*common, mask0=t["mask0"], mask1=t["mask1"])
        unmasked = model.match(*common)
    assert t["mask0"].all() and t["mask1"].all()
    for a, b in zip(masked, unmasked):
        assert torch.equal(a, b)


def test_padded_keys_get_exactly_zero_weight_and_a_query_with_no_key_an_empty_message():
    # The mask is an added bias, so a padded key keeps its own logit under LOG_ZERO: put it
    # 5,000 above every kept logit (LightGlue's real logits stay within +-750), well inside
    # the bound of ``attend`` (1e4 - 104). Exact zero weight means that nothing about the padded
    # keys, neither their logits nor their values, can change the output by a single bit.
    torch.manual_seed(0)
    logits, value = torch.randn(2, 4, 5, 7) * 100, torch.randn(2, 4, 7, 3)
    logits[0, :, :, 5:] += 5000.0
    keys = key_mask(torch.tensor([[True] * 5 + [False] * 2, [False] * 7]))
    other_logits, other_value = logits.clone(), value.clone()
    other_logits[0, :, :, 5:] = torch.randn(4, 5, 2) * 100 + 5000.0
    other_value[0, :, 5:] = torch.randn(4, 2, 3) * 1e3
    got = attend(logits, value, keys)
    assert torch.equal(got, attend(other_logits, other_value, keys))
    torch.testing.assert_close(got[0], logits[0, :, :, :5].softmax(dim=-1) @ value[0, :, :5])
    assert torch.equal(got[1], torch.zeros_like(got[1]))


def test_sinkhorn_marginals_count_only_valid_keypoints():
    # Marginals of the paper: each of the m valid rows 1, dustbin row n, each of the n valid
    # columns 1, dustbin column m, padded slots 0. Iterated to convergence here (at 100
    # iterations, sharp scores leave rows a few percent off; the reference behaves the same).
    generator = torch.Generator().manual_seed(0)
    scores = 3 * torch.randn(1, 40, 36, generator=generator)
    m, n = 33, 30
    mask0, mask1 = torch.arange(40)[None] < m, torch.arange(36)[None] < n
    log_plan = sg.log_optimal_transport(scores, torch.tensor(1.0), 500, mask0, mask1)
    plan = log_plan[0].double().exp().numpy()
    np.testing.assert_allclose(plan[:m].sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(plan[:, :n].sum(0), 1.0, atol=1e-4)
    assert plan[-1].sum() == pytest.approx(n, abs=1e-3)
    assert plan[:, -1].sum() == pytest.approx(m, abs=1e-3)
    assert (plan[m:-1] == 0).all() and (plan[:, n:-1] == 0).all()


@pytest.mark.parametrize("spread", [1.0, 20.0, 100.0])
@pytest.mark.parametrize("padded", [False, True], ids=["all-valid", "padded"])
def test_scaling_sinkhorn_reaches_the_log_space_iterates(spread, padded):
    # The two formulations run the same iterations; they may differ only by float32 rounding.
    # spread 100 puts scores about +-400 apart, far past where unabsorbed scaling factors
    # overflow float32 (measured: 70 nats off at spread 50 without absorption).
    generator = torch.Generator().manual_seed(1)
    b, m, n = 2, 120, 100
    scores = spread * torch.randn(b, m, n, generator=generator)
    masks = (None, None)
    if padded:
        masks = (torch.arange(m)[None] < torch.tensor([[90], [120]]),
                 torch.arange(n)[None] < torch.tensor([[100], [40]]))
    log_space = sg.log_optimal_transport(scores, torch.tensor(1.0), 100, *masks,
                                         domain=SinkhornDomain.LOG)
    scaling = sg.log_optimal_transport(scores, torch.tensor(1.0), 100, *masks,
                                       domain=SinkhornDomain.SCALING)
    assert torch.isfinite(scaling).all()
    relevant = log_space > -50  # probabilities above e^-50; below, both are ~0
    assert torch.equal(relevant, scaling > -50) or \
        (log_space - scaling)[relevant ^ (scaling > -50)].abs().max() < 1e-2
    # float32 rounding of potentials as large as the scores: tolerance scales with them.
    assert (log_space - scaling)[relevant].abs().max() < 2e-5 * scores.abs().max()
    assert torch.equal(log_space == LOG_ZERO, scaling == LOG_ZERO)


def test_scaling_blocks_cover_the_iterations_exactly():
    assert sg._scaling_blocks(0) == []
    assert sg._scaling_blocks(1) == [1]
    assert sg._scaling_blocks(100) == [1] + [sg.SCALING_BLOCK] * 9 + [9]
    assert sum(sg._scaling_blocks(37)) == 37


def test_keypoints_are_normalised_by_width_and_height_in_that_order():
    keypoints = torch.tensor([[[320.0, 240.0], [640.0, 0.0]]])
    size = torch.tensor([[640.0, 480.0]])  # (width, height)
    normalised = sg.normalize_keypoints(keypoints, size)
    expected = torch.tensor([[[0.0, 0.0], [320 / 448, -240 / 448]]])  # scale 0.7 * 640
    torch.testing.assert_close(normalised, expected)


def test_heads_take_every_num_heads_th_channel():
    # Magic Leap's layout: view(batch, head_dim, heads, n), so head h owns channels h, h+4, ...
    torch.manual_seed(0)
    attention = sg.MultiHeadAttention(16, 4).eval()
    x, source = torch.randn(1, 16, 5), torch.randn(1, 16, 7)
    with torch.no_grad():
        got = attention(x, source, None)
        q, k, v = (p(t) for p, t in zip(attention.proj, (x, source, source)))
        message = torch.empty(1, 16, 5)
        for h in range(4):
            channels = slice(h, None, 4)
            weights = torch.softmax(q[0, channels].T @ k[0, channels] / 2.0, dim=-1)  # sqrt(4)
            message[0, channels] = (weights @ v[0, channels].T).T
        expected = attention.merge(message)
    torch.testing.assert_close(got, expected)


def expected_state_dict_keys(layers=18):
    """Magic Leap's key list, written from the architecture."""
    keys = ["bin_score", "final_proj.weight", "final_proj.bias"]
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for conv, norm in ((0, 1), (3, 4), (6, 7), (9, 10), (12, None)):  # 3->32->64->128->256->256
        keys += [f"kenc.encoder.{conv}.weight", f"kenc.encoder.{conv}.bias"]
        if norm is not None:
            keys += [f"kenc.encoder.{norm}.{name}" for name in batch_norm]
    for layer in range(layers):
        prefix = f"gnn.layers.{layer}."
        for conv in ("attn.merge", "attn.proj.0", "attn.proj.1", "attn.proj.2", "mlp.0", "mlp.3"):
            keys += [prefix + conv + ".weight", prefix + conv + ".bias"]
        keys += [prefix + "mlp.1." + name for name in batch_norm]
    return keys


def test_state_dict_has_magic_leaps_keys_and_shapes(model):
    state = model.state_dict()
    assert sorted(state) == sorted(expected_state_dict_keys())
    assert len(state) == 339
    shapes = {
        "kenc.encoder.0.weight": (32, 3, 1), "kenc.encoder.12.weight": (256, 256, 1),
        "kenc.encoder.10.running_var": (256,), "gnn.layers.17.attn.proj.2.weight": (256, 256, 1),
        "gnn.layers.0.mlp.0.weight": (512, 512, 1), "gnn.layers.0.mlp.3.weight": (256, 512, 1),
        "final_proj.weight": (256, 256, 1), "bin_score": ()}
    assert {key: tuple(state[key].shape) for key in shapes} == shapes
    assert sum(p.numel() for p in model.parameters()) == 12_023_297


def test_checkpoint_round_trip_is_strict(model, tmp_path):
    path = tmp_path / "superglue_test.pth"
    torch.save(model.state_dict(), path)
    loaded = sg.load_superglue(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # A checkpoint that predates BatchNorm's counters still loads (PyTorch's own allowance)...
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, path)
    sg.load_superglue(path)
    # ...but a missing or unexpected weight does not.
    for broken in ({k: v for k, v in old.items() if k != "final_proj.bias"},
                   {**old, "gnn.layers.18.attn.merge.weight": old["final_proj.weight"]}):
        torch.save(broken, path)
        with pytest.raises(RuntimeError):
            sg.load_superglue(path)


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = sg.random_superglue(3), sg.random_superglue(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sha256_state_dict(a.state_dict()) == sha256_state_dict(b.state_dict())
    other = sg.random_superglue(4)
    assert sha256_state_dict(a.state_dict()) != sha256_state_dict(other.state_dict())
    assert not a.training and a.bin_score.item() == 1.0
    assert torch.equal(a.kenc.encoder[1].running_mean, torch.zeros(32))
    assert torch.equal(a.gnn.layers[5].mlp[1].running_var, torch.ones(512))
    weight = a.final_proj.weight[:, :, 0]
    torch.testing.assert_close(weight @ weight.T, 256.0 * torch.eye(256), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# The CLI


def parse(argv):
    parser = argparse.ArgumentParser()
    sg.configure_parser(parser)
    return parser.parse_args(argv)


def test_cli_defaults_come_from_the_settings_and_sources_exclude_each_other(capsys):
    args = parse(["--random-init"])
    assert args.sinkhorn_iterations == SuperGlueSettings().sinkhorn_iterations
    assert args.match_threshold == SuperGlueSettings().match_threshold
    assert "random-init" in sg.default_out(args).name
    with pytest.raises(SystemExit):
        parse(["--random-init", "--weights", "x.pth"])
    with pytest.raises(SystemExit):
        parse([])
    assert sg.default_out(parse(["--weights", "superglue_indoor.pth"])).name == "superglue.onnx"


@pytest.mark.parametrize("seed,code", [(SEED, 0), (SEED + 1, 1)],
                         ids=["same-weights", "other-weights"])
def test_cli_reports_parity_and_fails_when_the_graph_is_not_the_model(graph, monkeypatch, capsys,
                                                                        tmp_path, seed, code):
    # The export itself is tested above; here it hands over the session's graph (seed 0), so a
    # run for seed 1 must find the graph and its own module disagree and exit non-zero.
    out = tmp_path / "out.onnx"

    def fake_export(model, path, weights_file, weights_sha256, manifest=True):
        out.write_bytes(graph.read_bytes())
        return out

    monkeypatch.setattr(sg, "export", fake_export)
    monkeypatch.setattr(sg, "_CLI_CASES", (dict(n0=48, n1=40, size0=(640, 480),
                                                size1=(640, 480), valid0=40, valid1=40),))
    assert sg.run(parse(["--random-init", "--seed", str(seed), "--out", str(out)])) == code
    printed = capsys.readouterr().out
    assert str(out) in printed and "sha256" in printed and f"random-init:seed={seed}" in printed
    assert ("FAILED" in printed) == bool(code)


# ---------------------------------------------------------------------------------------------
# The runtime's SuperGlue path


def test_runtime_registers_through_the_exported_graph(graph):
    """The runtime feeds the graph per contract and reads matches the right way round.

    Random weights are no trained matcher, but matching an image with a warped copy of itself
    they pair up identical descriptors (see ``random_superglue``); a swapped index order, a
    wrong image size or broken masks would give no consistent affine, so recovering the known
    warp checks the plumbing end to end.
    """
    from dataclasses import replace

    from benchmarks.known_truth import SUCCESS_PX, make_cases, mean_fov_error
    from conftest import CC0_RETINA
    from ophreg_rt import MatcherName, Registrar, RegistrarConfig

    case = make_cases([CC0_RETINA], per_image=1, seed=7)[0]
    registrar = Registrar(replace(RegistrarConfig(), matcher=MatcherName.SUPERGLUE, threads=1),
                          matcher_model=graph)
    result = registrar.register(case.fixed, case.moving)
    assert result.ok, result.reason
    assert mean_fov_error(result, case) < SUCCESS_PX
    assert result.to_json()["models"]["superglue"]["file"] == graph.name
    assert (result.match_scores > SuperGlueSettings().match_threshold).all()
