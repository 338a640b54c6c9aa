"""Typed errors raised at the engine's boundary.

Every error a user can cause (a bad file, a wrong model, a provider that is not installed)
is an :class:`OphregError`; the CLI turns each into one line on stderr and an exit code,
and never shows a traceback for them.
"""

from __future__ import annotations


class OphregError(Exception):
    """Base class of every error the engine raises on purpose."""


class ImageDecodeWarning(UserWarning):
    """A codec decoded an image but complained on the way (e.g. libjpeg's "Corrupt JPEG data"):
    the pixels may hold garbage blocks."""


class ImageReadError(OphregError):
    """An image file is missing, unreadable, or of a kind the engine does not take."""


class DatasetError(OphregError):
    """An evaluation data set is missing, malformed or incomplete: its folder layout, its CSV
    of pairs, or a file of control points (``ophreg evaluate``)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the configured limit (``RegistrarConfig.max_pixels``)."""


class ModelError(OphregError):
    """A model file is missing, unreadable, or not an ONNX graph onnxruntime can load."""


class ModelChecksumError(ModelError):
    """A graph's sha256 is not the one its folder's ``manifest.json`` records (corrupted or
    replaced), or a default graph is not listed there at all."""


class ContractMismatchError(ModelError):
    """A graph loads but its inputs, outputs or ``ophreg.*`` metadata are not the contract's."""


class ProviderUnavailableError(OphregError):
    """The requested onnxruntime execution provider is not available or was not applied."""


class RegistrationFailedError(OphregError):
    """A refused registration was used as if it had succeeded (e.g. asked to warp with it).

    ``Registrar.register`` itself never raises it: a refusal is a result with status "failed".
    """


class OutputExistsError(OphregError):
    """An output file already exists and overwriting was not asked for."""


class OutputWriteError(OphregError):
    """An output cannot be written (a folder in its place, no permission, a full disk)."""


class BatchLockedError(OphregError):
    """Another ``ophreg batch`` is writing results into the same output folder."""


class BatchFolderError(OphregError):
    """An ``ophreg batch`` output folder cannot be continued or reported on: its results were
    computed with other options, a file in it was changed by something else than ophreg, or
    it holds no results yet."""


class EngineError(OphregError):
    """The batch engine failed: a worker process could not start, or a Ray cluster could not
    be reached or failed."""


class PatientMismatchError(OphregError):
    """DICOM images of two different patients were given as one pair: a warped image is only
    filed into its own patient's study."""


class InvalidConfigError(OphregError):
    """Options that cannot work together (e.g. SIFT features with a learned matcher)."""
