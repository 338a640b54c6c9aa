"""The one-graph pipeline (SuperPoint + LightGlue) equals the two-graph path it replaces.

The pipeline is exported once from the published checkpoints (about a minute, hence slow) and
compared with the shipped ``models/superpoint.onnx`` then ``models/lightglue.onnx`` on a real
pair, each image at its own size. Tolerances (export/pipeline.py): identical keypoint counts,
matches and matched coordinates; matching scores within 5e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import MODELS_DIR, WEIGHTS_DIR, _missing  # noqa: E402
from ophreg_rt.contract import (  # noqa: E402
    OPSET, PIPELINE_INPUTS, PIPELINE_OUTPUTS, REQUIRED_METADATA, MetaKey, ModelKind, PipelineIO,
    decode_metadata,
)

from export import pipeline as pl  # noqa: E402
from export.superpoint import load_grey  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

REAL_PAIR = "pairs/varia_R067_R118"


@pytest.fixture(scope="module")
def graph(tmp_path_factory, superpoint_weights):
    lightglue_weights = WEIGHTS_DIR / "superpoint_lightglue.pth"
    if not lightglue_weights.is_file():
        _missing(f"LightGlue checkpoint not found at {lightglue_weights}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pl.export(superpoint_weights, lightglue_weights,
                         tmp_path_factory.mktemp("pipeline") / "pipeline.onnx")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sessions(graph):
    return (pl.onnx_session(graph, threads=1), pl.onnx_session(MODELS_DIR / "superpoint.onnx", 1),
            pl.onnx_session(MODELS_DIR / "lightglue.onnx", 1))


def test_graph_is_valid_at_contract_opset_with_contract_io_and_metadata(graph, sessions):
    proto = onnx.load(graph)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)]
    assert [v.name for v in proto.graph.input] == [s.name for s in PIPELINE_INPUTS]
    assert [v.name for v in proto.graph.output] == [s.name for s in PIPELINE_OUTPUTS]
    meta = decode_metadata(sessions[0].get_modelmeta().custom_metadata_map, ModelKind.PIPELINE)
    assert set(REQUIRED_METADATA[ModelKind.PIPELINE]) <= set(meta)
    assert meta[MetaKey.MATCHER] == ModelKind.LIGHTGLUE
    assert meta[MetaKey.MAX_KEYPOINTS] == 1024


def test_pipeline_equals_superpoint_graph_then_lightglue_graph(sessions, data_dir):
    # Each image at its own size: the two images' height and width are independent inputs.
    sizes = ((640, 480), (512, 384))
    pipeline, superpoint, lightglue = sessions
    image0 = load_grey(data_dir / REAL_PAIR / "fixed.pgm", sizes[0])[None, None]
    image1 = load_grey(data_dir / REAL_PAIR / "moving.pgm", sizes[1])[None, None]
    got = pl.run_pipeline(pipeline, image0, image1)
    figures = pl.agreement(got, pl.two_graph_reference(superpoint, lightglue, image0, image1),
                           f"{sizes}")
    assert figures.ok, figures.line()
    assert figures.counts["matches"] >= 100, figures.line()
    # Slots follow the contract: valid first, best score first, padding values after.
    mask = got[PipelineIO.MATCH_MASK][0]
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()
    scores = got[PipelineIO.MATCH_SCORES][0]
    assert (np.diff(scores[:n]) <= 0).all() and (scores[n:] == 0).all()
    assert (got[PipelineIO.MATCHED_KEYPOINTS[0]][0, n:] == -1).all()
    assert (got[PipelineIO.MATCH_INDICES[1]][0, n:] == -1).all()
