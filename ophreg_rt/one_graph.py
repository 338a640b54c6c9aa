"""Run the one-graph registration (``python -m export registration``) and report what
``ophreg register`` reports.

The graph does everything in-graph (preprocessing, SuperPoint, LightGlue, RANSAC on a constant
hypothesis table, the transform of ``auto``, its refusals, the warp); this wrapper only feeds
it two uint8 images and turns its tensors into the runtime's JSON fields (``status``,
``reason``, ``transform``, ``affine``, ``matrix``, ``quadratic``, ``model_selection``,
``num_keypoints``, ``num_matches``, ``num_inliers``, ``timings_ms``, ``features``, ``matcher``,
``models``, ``provider``). It is the reference the other bindings' examples copy: everything
here is decoding of the contract (``contract.REGISTRATION_OUTPUTS`` and its code lists).

``python -m ophreg_rt.one_graph FIXED MOVING [--graph PATH] [--out-dir DIR] [--json PATH]``
writes the JSON (stdout or ``--json``) and ``DIR/warped.png``; exit codes as ``ophreg
register`` (0 registered, 3 refused, 2 bad input).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import REFERENCE_SIZE, Device, QuadraticConfig, TransformModel
from .contract import (QUADRATIC_REFUSALS, REGISTRATION_INPUTS,
                       REGISTRATION_OUTPUTS, REGISTRATION_REASONS, REGISTRATION_STATUS,
                       REGISTRATION_TRANSFORMS, ModelKind, QuadraticRefusal, RegistrationIO)
from .errors import ImageReadError, OphregError, RegistrationFailedError
from .imageio import (ImageSource, check_writable, describe, encode_image, read_image,
                      stretch_to_uint8, write_files_atomic)
from .quadratic import QUADRATIC_TERMS
from .sessions import LoadedModel, load_model
from .transforms import map_points

#: Default graph file name, looked up where the runtime looks up its graphs (model_files).
GRAPH_FILE = "registration.onnx"

EXIT_OK, EXIT_USAGE, EXIT_FAILED = 0, 2, 3


@dataclass(frozen=True)
class OneGraphResult:
    """The graph's outputs, decoded. FIXED is the target, MOVING the source.

    status, reason: "ok" / "failed" and the contract's reason text (None when ok).
    transform: the model whose parameters hold (affine or quadratic).
    matrix: ``(3, 3)`` float64 moving -> fixed pixels of the affine (also the affine of the
        inliers when the quadratic was taken; ``to_json`` reports it only for an affine).
    coefficients: ``(2, 6)`` float64 on ``QUADRATIC_TERMS`` (an affine has zeros in the first
        three columns).
    loo_rms: leave-one-out RMS residuals (affine, quadratic), px of the fixed image; NaN where
        not fitted. quadratic_refusal: code into ``contract.QUADRATIC_REFUSALS``.
    num_keypoints: keypoints left after the mask, (fixed, moving).
    points_fixed, points_moving: ``(M, 2)`` the matches in original pixels, best score first;
        match_scores ``(M,)``; inliers ``(M,)`` bool.
    warped: the moving image in the fixed frame, uint8 ``(H0, W0, C)`` (``(H0, W0)`` for grey).
    """

    status: str
    reason: str | None
    transform: TransformModel
    matrix: np.ndarray
    coefficients: np.ndarray
    loo_rms: tuple[float, float]
    quadratic_refusal: int
    num_keypoints: tuple[int, int]
    points_fixed: np.ndarray
    points_moving: np.ndarray
    match_scores: np.ndarray
    inliers: np.ndarray
    warped: np.ndarray
    fixed_size: tuple[int, int]
    moving_size: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    provider: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def parameters(self) -> np.ndarray:
        return self.coefficients if self.transform is TransformModel.QUADRATIC else self.matrix

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` MOVING pixels -> FIXED pixels by the fitted model."""
        if not self.ok:
            raise RegistrationFailedError(f"no transform: registration failed ({self.reason})")
        return map_points(self.transform, self.parameters, points)

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    def model_selection(self) -> dict | None:
        """``auto``'s choice in the runtime's words (``Registrar._grow``), or None when the
        affine failed and no quadratic was considered."""
        if self.quadratic_refusal == QuadraticRefusal.AFFINE_FAILED:  # the runtime reports no selection
            return None
        affine, quadratic = self.loo_rms
        fitted = bool(np.isfinite(affine) and np.isfinite(quadratic))
        selection = {"requested": TransformModel.AUTO.value,
                     "loo_rms_px": {"affine": round(affine, 4), "quadratic": round(quadratic, 4)}
                     if fitted else None}
        refusal = QUADRATIC_REFUSALS[self.quadratic_refusal]
        if refusal is None:
            selection["chosen"] = TransformModel.QUADRATIC.value
            return selection
        if self.quadratic_refusal == QuadraticRefusal.NO_GAIN and fitted:
            gain = quadratic / max(affine, 1e-12)
            refusal = (f"the quadratic predicts held-out inliers {gain:.2f} times as far as "
                       f"the affine, not below {QuadraticConfig().auto_gain:g}")
        selection["why_not_quadratic"] = refusal
        selection["chosen"] = TransformModel.AFFINE.value
        return selection

    def to_json(self) -> dict:
        """``ophreg register``'s JSON object (``RegistrationResult.to_json``'s fields)."""
        affine_model = self.ok and self.transform is TransformModel.AFFINE
        quadratic_model = self.ok and self.transform is TransformModel.QUADRATIC
        return {
            "status": self.status,
            "reason": self.reason,
            "transform": self.transform.value,
            "affine": self.matrix[:2].tolist() if affine_model else None,
            "matrix": self.matrix.tolist() if affine_model else None,
            "quadratic": {"terms": list(QUADRATIC_TERMS),
                          "coefficients": self.coefficients.tolist()} if quadratic_model else None,
            "model_selection": self.model_selection(),
            "fixed_size": list(self.fixed_size),
            "moving_size": list(self.moving_size),
            "num_keypoints": list(self.num_keypoints),
            "num_matches": len(self.match_scores),
            "num_inliers": self.num_inliers,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "features": "superpoint",
            "matcher": "lightglue",
            "models": self.models,
            "provider": self.provider,
        }


def as_graph_image(image: np.ndarray, label: str) -> np.ndarray:
    """``(H, W, C)`` uint8 as the graph takes it: grey gets a channel axis, 16-bit images are
    stretched to 8 bits as the runtime's preprocessing stretches them (so the warp is 8-bit)."""
    if image.dtype == np.uint16:
        image = stretch_to_uint8(image)
    if image.dtype != np.uint8:
        raise ImageReadError(f"{label}: pixel type {image.dtype} is not supported (8- or 16-bit)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4:
        raise ImageReadError(f"{label}: shape {image.shape} is not (H, W) or (H, W, 1..4)")
    if image.size == 0:
        # The graph refuses any image under its minimum side itself, but an empty moving
        # image stops its warp (GridSample takes no empty input): no image, no registration.
        raise ImageReadError(f"{label}: the image has no pixels ({image.shape[1]}x{image.shape[0]})")
    return np.ascontiguousarray(image)


def default_graph() -> Path:
    """``registration.onnx`` where the runtime finds its default graphs (``$OPHREG_MODELS_DIR``,
    the wheel's models, the checkout's ``models/``)."""
    from .model_files import models_dir

    return models_dir() / GRAPH_FILE


class OneGraphRegistrar:
    """Loads the registration graph once (verified: manifest checksum when listed, contract
    metadata and I/O, provider); ``register`` may then be called for many pairs."""

    def __init__(self, model_path: str | os.PathLike | None = None, device: Device = Device.CPU,
                 threads: int | None = None, allow_cpu_fallback: bool = False):
        self.model: LoadedModel = load_model(
            model_path or default_graph(), ModelKind.REGISTRATION, REGISTRATION_INPUTS,
            REGISTRATION_OUTPUTS, device=device, threads=threads,
            allow_cpu_fallback=allow_cpu_fallback)
        self._names = [spec.name for spec in REGISTRATION_OUTPUTS]

    @property
    def models(self) -> dict[str, dict[str, str]]:
        return {ModelKind.REGISTRATION: {"file": self.model.path.name,
                                         "sha256": self.model.sha256}}

    def run(self, fixed: np.ndarray, moving: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's raw outputs, by contract name, for two ``(H, W, C)`` uint8 arrays."""
        feeds = {RegistrationIO.IMAGES[0]: fixed, RegistrationIO.IMAGES[1]: moving}
        return dict(zip(self._names, self.model.session.run(self._names, feeds)))

    def register(self, fixed: ImageSource, moving: ImageSource, fixed_name: str | None = None,
                 moving_name: str | None = None) -> OneGraphResult:
        """Register MOVING onto FIXED. Files are read as ``ophreg register`` reads them (a bad
        or tiny file raises an OphregError); arrays of any size go to the graph, which refuses
        an image too small to register with status "failed" itself."""
        started = time.perf_counter()
        images = []
        for source, name in ((fixed, fixed_name), (moving, moving_name)):
            label = describe(source, name)
            if not isinstance(source, np.ndarray):
                source = read_image(source, name)
            images.append(as_graph_image(source, label))
        read_ms = (time.perf_counter() - started) * 1000.0
        out = self.run(*images)
        graph_ms = (time.perf_counter() - started) * 1000.0 - read_ms
        return decode(out, images[0].shape, images[1].shape,
                      timings_ms={"read": read_ms, "graph": graph_ms,
                                  "total": (time.perf_counter() - started) * 1000.0},
                      models=self.models, provider=self.model.provider,
                      squeeze_grey=images[1].shape[2] == 1)


def decode(out: dict[str, np.ndarray], fixed_shape: tuple[int, ...], moving_shape: tuple[int, ...],
           timings_ms: dict[str, float] | None = None, models: dict | None = None,
           provider: str = "", squeeze_grey: bool = True) -> OneGraphResult:
    """The contract's tensors as a result (the one place that reads the code lists)."""
    io = RegistrationIO
    status = REGISTRATION_STATUS[int(out[io.STATUS])]
    valid = np.asarray(out[io.MATCH_MASK], dtype=bool)
    fixed_size = (int(fixed_shape[1]), int(fixed_shape[0]))
    # loo_rms is px at the reference size in the contract, px of the fixed image in the JSON.
    to_fixed = max(fixed_size) / REFERENCE_SIZE
    warped = np.asarray(out[io.WARPED])
    if squeeze_grey and warped.ndim == 3 and warped.shape[2] == 1:
        warped = warped[:, :, 0]
    return OneGraphResult(
        status=status,
        reason=REGISTRATION_REASONS[int(out[io.REASON])],
        transform=TransformModel(REGISTRATION_TRANSFORMS[int(out[io.TRANSFORM])]),
        matrix=np.asarray(out[io.MATRIX], dtype=np.float64),
        coefficients=np.asarray(out[io.COEFFICIENTS], dtype=np.float64),
        loo_rms=tuple(float(v) * to_fixed for v in out[io.LOO_RMS]),
        quadratic_refusal=int(out[io.QUADRATIC_REFUSAL]),
        num_keypoints=tuple(int(v) for v in out[io.NUM_KEYPOINTS]),
        points_fixed=np.asarray(out[io.MATCHED_KEYPOINTS[0]], dtype=np.float64)[valid],
        points_moving=np.asarray(out[io.MATCHED_KEYPOINTS[1]], dtype=np.float64)[valid],
        match_scores=np.asarray(out[io.MATCH_SCORES])[valid],
        inliers=np.asarray(out[io.INLIERS], dtype=bool)[valid],
        warped=warped,
        fixed_size=fixed_size,
        moving_size=(int(moving_shape[1]), int(moving_shape[0])),
        timings_ms=dict(timings_ms or {}), models=dict(models or {}), provider=provider)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ophreg_rt.one_graph",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path)
    parser.add_argument("moving", type=Path)
    parser.add_argument("--graph", type=Path, help=f"default: {GRAPH_FILE} of the models folder")
    parser.add_argument("--out-dir", type=Path, help="writes warped.png there")
    parser.add_argument("--json", dest="json_path", type=Path, help="default: stdout")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    args = parser.parse_args(argv)
    try:
        warped_path = args.out_dir / "warped.png" if args.out_dir else None
        check_writable([p for p in (warped_path, args.json_path) if p is not None], args.force)
        registrar = OneGraphRegistrar(args.graph, threads=args.threads)
        result = registrar.register(args.fixed, args.moving, str(args.fixed), str(args.moving))
        files = {}
        if warped_path is not None and result.ok:
            files[warped_path] = encode_image(warped_path, result.warped)
        document = json.dumps(result.to_json(), indent=2) + "\n"
        if args.json_path:
            files[args.json_path] = document.encode()
        write_files_atomic(files)
    except OphregError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.json_path:
        sys.stdout.write(document)
    return EXIT_OK if result.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
