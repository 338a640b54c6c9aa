"""Pieces every exporter shares: hashing, metadata, dimension names, checking, saving."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import torch

from ophreg_rt.contract import CONTRACT_VERSION, OPSET, MetaKey, TensorSpec, encode_metadata
from ophreg_rt.sessions import sha256_file  # noqa: F401  (one home for file hashing)


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A content hash of weights that exist only in memory (random initialisation)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(state_dict[key].detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved by ``torch.save``, without executing pickled code."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def base_metadata(model: str, weights_file: str, weights_sha256: str) -> dict[str, object]:
    return {
        MetaKey.CONTRACT_VERSION: CONTRACT_VERSION,
        MetaKey.MODEL: model,
        MetaKey.WEIGHTS_FILE: weights_file,
        MetaKey.WEIGHTS_SHA256: weights_sha256,
        MetaKey.OPSET: OPSET,
    }


def attach_metadata(model: onnx.ModelProto, settings: Mapping[str, object]) -> None:
    """Store export settings as ``ophreg.*`` entries of the model's metadata_props."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in encode_metadata(settings).items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def name_dimensions(model: onnx.ModelProto, specs: Iterable[TensorSpec]) -> None:
    """Give the graph's dynamic axes the contract's symbolic names.

    Exporters name derived dimensions after internal symbols (``s0``, ``8*s1``); the contract
    names them ``height``, ``num_keypoints0``... Fixed axes are left as the exporter wrote them.
    """
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for spec in specs:
        value = values.get(spec.name)
        if value is None:
            raise ValueError(f"exported graph has no tensor named {spec.name!r}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ValueError(f"{spec.name}: exported rank {len(dims)}, contract rank {len(spec.shape)}")
        for dim, wanted in zip(dims, spec.shape):
            if isinstance(wanted, str) and not dim.HasField("dim_value"):
                dim.dim_param = wanted


def check_and_save(model: onnx.ModelProto, out: str | Path) -> Path:
    """Run onnx's full checker (with shape inference) and write the model as one file."""
    onnx.checker.check_model(model, full_check=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, out, save_as_external_data=False)
    return out


def update_manifest(graph_path: str | Path, model: str, source_checkpoint: str,
                    source_sha256: str, settings: Mapping[str, object]) -> Path:
    """Record a written graph in ``manifest.json`` beside it (one entry per graph file)."""
    graph_path = Path(graph_path)
    manifest_path = graph_path.parent / "manifest.json"
    manifest = {"graphs": []}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    entries = [e for e in manifest.get("graphs", []) if e.get("file") != graph_path.name]
    entries.append({
        "file": graph_path.name,
        "model": model,
        "sha256": sha256_file(graph_path),
        "source_checkpoint": source_checkpoint,
        "source_sha256": source_sha256,
        "settings": {key: settings[key] for key in sorted(settings)},
    })
    manifest["graphs"] = sorted(entries, key=lambda e: e["file"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path


#: The published checkpoints, where the project keeps them (``../shared/weights``, README there).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--superpoint-weights`` and ``--lightglue-weights``, for the exporters that build
    SuperPoint and LightGlue into one graph (pipeline, registration)."""
    parser.add_argument("--superpoint-weights", type=Path,
                        default=SHARED_WEIGHTS / "superpoint_v1.pth",
                        help="default: ../shared/weights/superpoint_v1.pth")
    parser.add_argument("--lightglue-weights", type=Path,
                        default=SHARED_WEIGHTS / "superpoint_lightglue.pth",
                        help="default: ../shared/weights/superpoint_lightglue.pth")
