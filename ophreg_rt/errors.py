"""Typed errors raised at the engine's boundary.

Every error a user can cause (a bad file, a wrong model, a provider that is not installed)
is an :class:`OphregError`; the CLI turns each into one line on stderr and an exit code,
and never shows a traceback for them.
"""

from __future__ import annotations


class OphregError(Exception):
    """Base class of every error the engine raises on purpose."""


class ImageReadError(OphregError):
    """An image file is missing, unreadable, or of a kind the engine does not take."""


class ModelError(OphregError):
    """A model file is missing, unreadable, or not an ONNX graph onnxruntime can load."""


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


class InvalidConfigError(OphregError):
    """Options that cannot work together (e.g. SIFT features with a learned matcher)."""
