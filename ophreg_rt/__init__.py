"""ophreg_rt: registration of ophthalmic images with ONNX graphs of SuperPoint and LightGlue
(SuperGlue and mutual nearest neighbours as options).

Torch-free: it needs only numpy, opencv and onnxruntime.

    from ophreg_rt import Registrar
    registrar = Registrar()                      # loads models/superpoint.onnx once
    result = registrar.register("fixed.jpg", "moving.jpg")
    if result.ok:
        warped = registrar.warp("moving.jpg", result)   # moving image in the fixed frame
"""

from .config import (Device, FeatureName, MatcherName, PlausibilityConfig, PreprocessConfig,
                     PreprocessMode, RansacConfig, RegistrarConfig, SiftConfig, TransformModel)
from .errors import (BatchLockedError, ContractMismatchError, DatasetError, ImageReadError,
                     ImageTooLargeError, ModelChecksumError, ModelError, OphregError,
                     OutputExistsError, OutputWriteError, ProviderUnavailableError,
                     RegistrationFailedError)

__version__ = "0.1.0"

__all__ = [
    "Registrar", "RegistrationResult", "RegistrarConfig", "PreprocessConfig", "PreprocessMode",
    "RansacConfig", "PlausibilityConfig", "TransformModel", "MatcherName", "FeatureName",
    "SiftConfig", "Device",
    "OphregError", "ImageReadError", "ImageTooLargeError", "ModelError", "ModelChecksumError",
    "ContractMismatchError", "ProviderUnavailableError", "RegistrationFailedError",
    "OutputExistsError", "OutputWriteError", "BatchLockedError", "DatasetError",
]


def __getattr__(name: str):
    # Lazy, so that `import ophreg_rt.contract` (the exporters do) loads neither onnxruntime nor cv2.
    if name in ("Registrar", "RegistrationResult"):
        from . import registrar

        return getattr(registrar, name)
    raise AttributeError(f"module 'ophreg_rt' has no attribute {name!r}")
