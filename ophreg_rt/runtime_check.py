"""Which onnxruntime build is installed: exactly one may be, or none works reliably.

onnxruntime's CPU and GPU builds are two distributions (``onnxruntime``, ``onnxruntime-gpu``, and
others) that install the same Python package, ``onnxruntime``: with two installed, one build's
files overwrite the other's, and typically the CPU build wins, so the CUDA provider is never
available (onnxruntime's install docs: uninstall one before installing the other). That is why
the package has two extras, ``cpu`` and ``gpu``, of which a user installs one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from .errors import ProviderUnavailableError

#: Distributions that provide the ``onnxruntime`` Python package.
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                      "onnxruntime-openvino", "onnxruntime-rocm", "onnxruntime-qnn",
                      "onnxruntime-training")
INSTALL_HINT = "pip install 'ophreg-rt[cpu]' (or 'ophreg-rt[gpu]' for CUDA)"


def installed_builds() -> list[str]:
    """The onnxruntime distributions installed in this environment."""
    found = []
    for name in ONNXRUNTIME_BUILDS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def onnxruntime_module() -> ModuleType:
    """``import onnxruntime``, refused with a typed error when no build or several builds are
    installed (the second would give a silently CPU-only or half-overwritten runtime)."""
    builds = installed_builds()
    if len(builds) > 1:
        raise ProviderUnavailableError(
            f"onnxruntime builds installed side by side: {', '.join(builds)}; they overwrite "
            f"each other's files (the CUDA provider then goes missing). Keep one: pip uninstall "
            f"-y {' '.join(builds)}, then {INSTALL_HINT}")
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise ProviderUnavailableError(
            f"onnxruntime cannot be imported ({exc}); {INSTALL_HINT}") from None
