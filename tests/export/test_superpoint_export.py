"""The SuperPoint export proves itself: a valid opset-17 graph that follows the contract and
gives what PyTorch gives, on real fundus images, at two sizes and two slot counts.

Tolerances, and why:

* onnxruntime vs PyTorch: identical keypoint sets; scores and descriptors within 1e-4. Both
  run the same float32 weights; they differ only in summation order (observed <= 2e-6).
  Scores are probabilities and descriptors unit vectors, so 1e-4 is loose for a correct graph
  and far tighter than any real mistake (a shifted sample point moves descriptors by >1e-2).
* fixed-slot module vs the published dynamic detector (both PyTorch, same dense maps): scores
  exactly equal (the same numbers, selected differently); descriptors within 1e-6 (the
  sampling arithmetic is written twice, float32 rounding only).
* batch of two vs batch of one: keypoints, scores and masks exactly equal; descriptors within
  1e-6 (onnxruntime vectorises the descriptor reduction differently per batch size, ~1e-7).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ophreg_rt.contract import (  # noqa: E402
    MAX_KEYPOINTS,
    OPSET,
    REQUIRED_METADATA,
    SUPERPOINT_INPUTS,
    SUPERPOINT_OUTPUTS,
    CONTRACT_VERSION,
    MetaKey,
    ModelKind,
    decode_metadata,
)

from export import superpoint as sp  # noqa: E402
from export.settings import SuperPointSettings  # noqa: E402

pytestmark = pytest.mark.export

ORT_TOLERANCE = 1e-4
SAME_TORCH_TOLERANCE = 1e-6
SMALL_K = 128  # fewer than both test images have, so the top-k really truncates
#: (width, height): one square, one not, so height and width are proven dynamic and distinct.
SIZES = ((512, 512), (640, 384))
#: A greyscale photograph (~200 keypoints at these sizes) and an angiogram (~930).
IMAGES = ("pairs/varia_R067_R118/fixed.pgm", "pairs/cf_fa_demo/moving.jpg")
DEFAULT_K = SuperPointSettings().max_keypoints


@pytest.fixture(scope="session")
def graphs(tmp_path_factory, superpoint_weights):
    """Exported graphs by slot count, each exported once per session.

    The default one goes through the CLI entry point (export, manifest, parity printout).
    """
    root = tmp_path_factory.mktemp("superpoint_graphs")
    default_path = root / "default" / "superpoint.onnx"
    parser = argparse.ArgumentParser()
    sp.configure_parser(parser)
    args = parser.parse_args(["--weights", str(superpoint_weights), "--out", str(default_path),
                              "--parity-sizes", "96x64"])
    assert sp.run(args) == 0
    small_path, _ = sp.export(superpoint_weights, root / "small" / "superpoint.onnx",
                              dataclasses.replace(SuperPointSettings(), max_keypoints=SMALL_K))
    return {DEFAULT_K: default_path, SMALL_K: small_path}


@pytest.fixture(scope="session")
def sessions(graphs):
    return {k: sp.onnx_session(path) for k, path in graphs.items()}


@pytest.fixture(scope="session")
def models(superpoint_weights):
    return {k: sp.load_superpoint(superpoint_weights,
                                  dataclasses.replace(SuperPointSettings(), max_keypoints=k))
            for k in (DEFAULT_K, SMALL_K)}


@pytest.fixture(scope="session")
def fundus(data_dir):
    """``fundus(index, size)`` -> ``[1, 1, H, W]`` float32 image, read once."""
    cache = {}

    def get(index: int, size: tuple[int, int]) -> np.ndarray:
        if (index, size) not in cache:
            cache[index, size] = sp.load_grey(data_dir / IMAGES[index], size)[None, None]
        return cache[index, size]

    return get


def run_graph(session, image: np.ndarray) -> list[np.ndarray]:
    return session.run([spec.name for spec in SUPERPOINT_OUTPUTS], {"image": image})


def run_torch(model, image: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(image))]


# ---------------------------------------------------------------------------------------------
# The graph file


def test_exported_graph_passes_onnx_full_check_at_contract_opset(graphs):
    for path in graphs.values():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {(o.domain, o.version) for o in model.opset_import} == {("", OPSET)}
        assert {node.domain for node in model.graph.node} == {""}, "contrib/custom ops in graph"


def test_weights_are_stored_inside_the_single_onnx_file(graphs):
    path = graphs[DEFAULT_K]
    model = onnx.load(str(path), load_external_data=False)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "superpoint.onnx"]
    # 1.30 M float32 parameters.
    assert path.stat().st_size > 5_000_000


@pytest.mark.parametrize("k", [DEFAULT_K, SMALL_K])
def test_graph_inputs_and_outputs_follow_the_contract(graphs, k):
    model = onnx.load(str(graphs[k]), load_external_data=False)
    for values, specs in ((model.graph.input, SUPERPOINT_INPUTS),
                          (model.graph.output, SUPERPOINT_OUTPUTS)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs):
            tensor_type = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            assert dtype == np.dtype(spec.dtype), spec.name
            dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
            wanted = [k if axis == MAX_KEYPOINTS else axis for axis in spec.shape]
            assert dims == wanted, spec.name


@pytest.mark.parametrize("k", [DEFAULT_K, SMALL_K])
def test_metadata_round_trips_through_onnxruntime(sessions, superpoint_weights, k):
    found = decode_metadata(sessions[k].get_modelmeta().custom_metadata_map, ModelKind.SUPERPOINT)
    defaults = SuperPointSettings()
    assert found == {
        MetaKey.CONTRACT_VERSION: CONTRACT_VERSION,
        MetaKey.MODEL: ModelKind.SUPERPOINT,
        MetaKey.WEIGHTS_FILE: superpoint_weights.name,
        MetaKey.WEIGHTS_SHA256: hashlib.sha256(superpoint_weights.read_bytes()).hexdigest(),
        MetaKey.OPSET: OPSET,
        MetaKey.NMS_RADIUS: defaults.nms_radius,
        MetaKey.KEYPOINT_THRESHOLD: defaults.keypoint_threshold,
        MetaKey.REMOVE_BORDERS: defaults.remove_borders,
        MetaKey.MAX_KEYPOINTS: k,
    }
    assert set(found) == set(REQUIRED_METADATA[ModelKind.SUPERPOINT])


def test_cli_export_records_the_graph_in_the_manifest(graphs, superpoint_weights):
    import json

    path = graphs[DEFAULT_K]
    manifest = json.loads((path.parent / "manifest.json").read_text())
    [entry] = manifest["graphs"]
    assert entry["file"] == path.name
    assert entry["model"] == ModelKind.SUPERPOINT
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["source_checkpoint"] == superpoint_weights.name
    assert entry["source_sha256"] == hashlib.sha256(superpoint_weights.read_bytes()).hexdigest()
    assert entry["settings"][MetaKey.MAX_KEYPOINTS] == DEFAULT_K


# ---------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("k", [DEFAULT_K, SMALL_K])
@pytest.mark.parametrize(("index", "size"), [(0, SIZES[0]), (1, SIZES[1])],
                         ids=["grey-photo-512x512", "angiogram-640x384"])
def test_onnxruntime_matches_torch_on_real_fundus_images(sessions, models, fundus, k, size, index):
    image = fundus(index, size)
    [figures] = sp.parity(sessions[k], models[k], image)
    assert figures.exact["same keypoints"], figures.line()
    assert figures.exact["padding exact"], figures.line()
    assert figures.differences["score"].value <= ORT_TOLERANCE, figures.line()
    assert figures.differences["descriptor"].value <= ORT_TOLERANCE, figures.line()
    found = figures.counts["keypoints (onnx)"]
    assert found > 0
    if k == SMALL_K:
        assert found == SMALL_K, "the small slot count should truncate"
    else:
        assert found < k, "the default slot count should leave padded slots"


def _assert_matches_reference(model, image: np.ndarray) -> int:
    keypoints, scores, descriptors, mask = (x[0] for x in run_torch(model, image))
    [ref] = sp.reference_detect(model, torch.from_numpy(image))
    ref = {name: t.numpy() for name, t in ref.items()}
    n = int(mask.sum())
    assert n == len(ref["scores"])
    assert sp.padding_exact(keypoints, scores, descriptors, mask)
    assert np.all(np.diff(scores[:n]) <= 0), "slots must be sorted by score, best first"
    mine, theirs = sp.canonical_order(keypoints[:n]), sp.canonical_order(ref["keypoints"])
    np.testing.assert_array_equal(keypoints[:n][mine], ref["keypoints"][theirs])
    np.testing.assert_array_equal(scores[:n][mine], ref["scores"][theirs])
    np.testing.assert_allclose(descriptors[:n][mine], ref["descriptors"][theirs],
                               rtol=0, atol=SAME_TORCH_TOLERANCE)
    return n


@pytest.mark.parametrize("k", [DEFAULT_K, SMALL_K])
def test_fixed_slot_detector_selects_what_the_published_detector_selects(models, fundus, k):
    # The angiogram has ~930 keypoints: all fit in the default slots, the small count truncates.
    n = _assert_matches_reference(models[k], fundus(1, SIZES[1]))
    assert n == SMALL_K if k == SMALL_K else 0 < n < k


def test_images_with_fewer_pixels_than_slots_still_work(models, sessions):
    # 24x32 = 768 pixels < 1024 slots: TopK must still get K candidates. A bright rectangle
    # gives corners to detect.
    image = np.zeros((1, 1, 24, 32), np.float32)
    image[..., 8:16, 10:22] = 1
    n = _assert_matches_reference(models[DEFAULT_K], image)
    assert n > 0
    [figures] = sp.parity(sessions[DEFAULT_K], models[DEFAULT_K], image)
    assert figures.ok, figures.line()


def test_batch_of_two_images_gives_each_image_its_single_image_result(sessions, models, fundus):
    single = [fundus(i, SIZES[1]) for i in range(2)]
    batch = np.concatenate(single)
    for run, model_or_session in ((run_graph, sessions[SMALL_K]), (run_torch, models[SMALL_K])):
        together = run(model_or_session, batch)
        for i, image in enumerate(single):
            alone = run(model_or_session, image)
            for name, a, b in zip(("keypoints", "scores", "descriptors", "mask"), together, alone):
                if name == "descriptors":
                    np.testing.assert_allclose(a[i], b[0], rtol=0, atol=SAME_TORCH_TOLERANCE)
                else:
                    np.testing.assert_array_equal(a[i], b[0], err_msg=name)
    # The two images really are different.
    assert not np.array_equal(together[0][0], together[0][1])


def test_flat_grey_image_gives_no_keypoints_and_exact_padding(sessions, models):
    image = np.full((2, 1, 64, 96), 0.5, np.float32)
    for outputs in (run_graph(sessions[DEFAULT_K], image), run_torch(models[DEFAULT_K], image)):
        keypoints, scores, descriptors, mask = outputs
        assert keypoints.shape == (2, DEFAULT_K, 2) and descriptors.shape == (2, DEFAULT_K, 256)
        assert mask.dtype == np.bool_ and not mask.any()
        assert np.all(keypoints == -1) and np.all(scores == 0) and np.all(descriptors == 0)


# ---------------------------------------------------------------------------------------------
# Pieces of the detector


def test_descriptors_are_sampled_bilinearly_with_magic_leaps_pixel_to_cell_mapping():
    # Pixel 3.5 -> first cell, last pixel (8*size - 1) -> last cell, linear in between; checked
    # against interpolation by hand on a 3x4 map (a 24x32 image).
    generator = torch.Generator().manual_seed(1)
    descriptor_map = torch.randn(1, 256, 3, 4, generator=generator)
    points = [(3.5, 3.5), (0.0, 0.0), (10.0, 7.0), (27.0, 19.0), (31.0, 23.0)]
    keypoints = torch.tensor([points])
    sampled = sp.sample_descriptors(descriptor_map, keypoints)[0].numpy()
    grid = descriptor_map[0].numpy()
    for (x, y), got in zip(points, sampled):
        u = (x - 3.5) / (8 * 4 - 4.5) * (4 - 1)  # position in cells
        v = (y - 3.5) / (8 * 3 - 4.5) * (3 - 1)
        expected = np.zeros(256)
        for cy in range(3):
            for cx in range(4):
                weight = max(0.0, 1 - abs(u - cx)) * max(0.0, 1 - abs(v - cy))
                expected += weight * grid[:, cy, cx]
        np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)
        assert abs(np.linalg.norm(got) - 1) < 1e-5


@pytest.mark.parametrize(("height", "width"), [(3, 4), (16, 20), (128, 128)])
def test_descriptors_at_keypoints_equal_sampling_the_dense_descriptor_map(height, width):
    # The graph computes descriptors only at the four cells each keypoint samples; it must equal
    # the published path (dense head, then bilinear sampling), including samples that straddle
    # or leave the map (zero padding) and per image of a batch. Random weights and features
    # exercise every channel; 1e-6 is float32 rounding of a sum of 1152 products.
    torch.manual_seed(0)
    model = sp.SuperPoint().eval()
    features = torch.relu(torch.randn(2, 128, height, width))
    count = 200
    keypoints = torch.stack([torch.rand(2, count) * (8 * width + 20) - 10,
                             torch.rand(2, count) * (8 * height + 20) - 10], dim=-1)
    keypoints[:, :4] = torch.tensor([[3.5, 3.5], [0.0, 0.0], [8 * width - 1.0, 8 * height - 1.0],
                                     [-1.0, -1.0]])  # first cell, corner, last pixel, padding
    with torch.no_grad():
        sparse = model.descriptors_at(features, keypoints)
        dense = sp.sample_descriptors(model.descriptor_map(features), keypoints)
    assert sparse.shape == (2, count, 256)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(sparse[0].numpy(), sparse[1].numpy())


def test_nms_keeps_separated_peaks_and_suppresses_weaker_neighbours_within_radius():
    scores = torch.zeros(1, 20, 20)
    scores[0, 5, 5] = 0.9
    scores[0, 5, 8] = 0.5  # 3 px from a stronger peak: suppressed
    scores[0, 5, 14] = 0.4  # 9 px away: kept
    scores[0, 15, 5] = 0.3  # isolated: kept
    kept = sp.simple_nms(scores, radius=4)[0]
    assert {tuple(p) for p in torch.nonzero(kept).tolist()} == {(5, 5), (5, 14), (15, 5)}
    assert kept[5, 5] == scores[0, 5, 5]


def test_checkpoint_loads_with_every_layer_name_matching(superpoint_weights):
    model = sp.load_superpoint(superpoint_weights)
    checkpoint = torch.load(superpoint_weights, map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(checkpoint)
    assert not model.training


def test_settings_that_cannot_be_exported_are_refused():
    for bad in ({"max_keypoints": 0}, {"max_keypoints": -1}, {"keypoint_threshold": -0.1},
                {"nms_radius": -1}, {"remove_borders": -2}):
        with pytest.raises(ValueError):
            sp.SuperPoint(dataclasses.replace(SuperPointSettings(), **bad))
