"""onnxruntime sessions whose provider is chosen explicitly and verified, and whose I/O is checked."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import Device
from .contract import MAX_KEYPOINTS, TensorSpec, decode_metadata
from .errors import ContractMismatchError, ModelChecksumError, ModelError, ProviderUnavailableError
from .model_files import expected_sha256
from .runtime_check import onnxruntime_module

_PROVIDERS = {
    Device.CPU: "CPUExecutionProvider",
    Device.CUDA: "CUDAExecutionProvider",
}

#: onnxruntime's names for the numpy dtypes the contract uses.
_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)",
              "uint8": "tensor(uint8)"}


@dataclass(frozen=True)
class LoadedModel:
    """A verified session and what it was made from."""

    session: object  # onnxruntime.InferenceSession (imported when a graph is loaded)
    path: Path
    sha256: str
    provider: str  # the provider onnxruntime actually put first
    metadata: dict[str, object]  # parsed ``ophreg.*`` export settings


def sha256_file(path: Path) -> str:
    # Not cached by mtime: the kernel's timestamps are coarse (milliseconds), so a graph changed
    # in place right after a load could keep a stale hash; hashing is ~0.1 s next to the
    # session's creation.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_sha256(path: Path) -> str:
    """The graph's sha256, checked against the ``manifest.json`` beside it when one lists it
    (always so for the default graphs); raises :class:`ModelChecksumError` on a mismatch."""
    try:
        found = sha256_file(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    expected = expected_sha256(path)
    if expected is not None and found != expected:
        raise ModelChecksumError(
            f"{path}: sha256 {found} is not the {expected} that {path.parent / 'manifest.json'} "
            "records: the file is corrupted or was replaced (restore it, re-export it, or name "
            "your own graph explicitly from another folder)")
    return found


def load_model(path: str | os.PathLike, model_kind: str, inputs: Sequence[TensorSpec],
               outputs: Sequence[TensorSpec], device: Device = Device.CPU,
               threads: int | None = None, allow_cpu_fallback: bool = False) -> LoadedModel:
    """Open an exported graph, verify its provider, its ``ophreg.*`` metadata and its I/O.

    Raises :class:`ModelError`, :class:`ContractMismatchError` or
    :class:`ProviderUnavailableError`, each naming the file and what was wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    # Before the session: a corrupted graph still loads and runs, and gives wrong answers.
    sha256 = verified_sha256(path)
    ort = onnxruntime_module()
    wanted = _PROVIDERS[Device(device)]
    cpu = _PROVIDERS[Device.CPU]
    available = ort.get_available_providers()
    if wanted not in available and not allow_cpu_fallback:
        raise ProviderUnavailableError(
            f"{path}: {wanted} is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install ophreg-rt[gpu] instead of [cpu] (one "
            "build only), or allow CPU fallback")
    providers = [p for p in dict.fromkeys([wanted, cpu]) if p in available]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: fall-backs are detected and reported below
    # The memory pattern plans one block per input shape on top of the arena: measured on
    # SuperPoint at 1024x1024 (batch of two), resident memory 2.25 GB with it and 1.17 GB
    # without, at the same speed (benchmarks/latency.py, levers).
    options.enable_mem_pattern = False
    # Idle pool threads spin by default; a pair runs SuperPoint's session and then the matcher's,
    # each with its own pool, so spinning SuperPoint threads steal the cores the matcher needs.
    # Measured end to end (SuperPoint + LightGlue, 1024x1024 pair, 2 threads): 2138 ms spinning,
    # 2081 ms not; SuperPoint alone is unchanged (benchmarks/latency.py, levers).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: onnxruntime cannot load it ({first_line})") from None
    applied = session.get_providers()[0]
    if applied != wanted and not allow_cpu_fallback:
        raise ProviderUnavailableError(
            f"{path}: asked for {wanted} but onnxruntime applied {applied} "
            f"(is CUDA/cuDNN installed and a GPU visible?)")
    metadata = decode_metadata(session.get_modelmeta().custom_metadata_map, model_kind,
                               source=str(path))
    check_io(session, inputs, outputs, str(path), metadata)
    return LoadedModel(session=session, path=path, sha256=sha256,
                       provider=applied, metadata=metadata)


def check_io(session, inputs: Sequence[TensorSpec],
             outputs: Sequence[TensorSpec], source: str, metadata: dict[str, object]) -> None:
    """Compare the graph's declared inputs and outputs with the contract's specs."""
    for kind, declared, specs in (("input", session.get_inputs(), inputs),
                                  ("output", session.get_outputs(), outputs)):
        found = {arg.name: arg for arg in declared}
        for spec in specs:
            arg = found.get(spec.name)
            if arg is None:
                raise ContractMismatchError(
                    f"{source}: {kind} '{spec.name}' missing; graph has {sorted(found)}")
            if arg.type != _ORT_TYPES[spec.dtype]:
                raise ContractMismatchError(
                    f"{source}: {kind} '{spec.name}' is {arg.type}, expected {_ORT_TYPES[spec.dtype]}")
            if len(arg.shape) != len(spec.shape):
                raise ContractMismatchError(
                    f"{source}: {kind} '{spec.name}' has rank {len(arg.shape)}, "
                    f"expected {len(spec.shape)} {spec.shape}")
            for axis, (have, want) in enumerate(zip(arg.shape, spec.shape)):
                if want == MAX_KEYPOINTS:
                    want = metadata.get("max_keypoints")
                if isinstance(want, int) and have != want:
                    raise ContractMismatchError(
                        f"{source}: {kind} '{spec.name}' axis {axis} is {have}, expected {want}")
