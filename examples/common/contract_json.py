"""Write examples/common/contract.json: the registration graph's contract, for JavaScript.

The Node command and the web page cannot import ``ophreg_rt.contract``; they read this JSON,
which is generated from it and from the runtime's defaults (names, dtypes, code lists, quadratic
terms, the reference size, auto's gain, the image-size and thread limits, the checkerboard's
tiles), so the JavaScript side has no hand-written copy that could drift. tests/examples checks
that the committed file equals what this script writes.

    python examples/common/contract_json.py           # rewrite it
    python examples/common/contract_json.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTRACT_JSON = HERE / "contract.json"


def contract_document() -> dict:
    # Imported here so that --help works outside the project's environment.
    from ophreg_rt import contract
    from ophreg_rt.config import MAX_PIXELS, MAX_THREADS, REFERENCE_SIZE, QuadraticConfig
    from ophreg_rt.quadratic import QUADRATIC_TERMS
    from ophreg_rt.visualize import CHECKER_TILES

    def specs(tensors):
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]

    names = {attribute.lower(): value for attribute, value in vars(contract.RegistrationIO).items()
             if attribute.isupper()}
    return {
        "generated_from": "ophreg_rt/contract.py by examples/common/contract_json.py; do not "
                          "edit by hand",
        "contract_version": contract.CONTRACT_VERSION,
        "model": contract.ModelKind.REGISTRATION,
        "metadata_prefix": contract.METADATA_PREFIX,
        "metadata_keys": {"contract_version": contract.MetaKey.CONTRACT_VERSION,
                          "model": contract.MetaKey.MODEL,
                          "matcher": contract.MetaKey.MATCHER,
                          "transform_model": contract.MetaKey.TRANSFORM_MODEL},
        "names": names,
        "inputs": specs(contract.REGISTRATION_INPUTS),
        "outputs": specs(contract.REGISTRATION_OUTPUTS),
        "status": list(contract.REGISTRATION_STATUS),
        "transforms": list(contract.REGISTRATION_TRANSFORMS),
        "reasons": list(contract.REGISTRATION_REASONS),
        "quadratic_refusals": list(contract.QUADRATIC_REFUSALS),
        # The two refusal codes a decoder treats apart (as one_graph.py does).
        "quadratic_refusal_codes": {"no_gain": int(contract.QuadraticRefusal.NO_GAIN),
                                    "affine_failed": int(contract.QuadraticRefusal.AFFINE_FAILED)},
        "quadratic_terms": list(QUADRATIC_TERMS),
        # loo_rms is px at this size in the graph, px of the fixed image in the JSON.
        "reference_size": REFERENCE_SIZE,
        # `auto`'s threshold and the runtime's words (registrar.Registrar._grow) when the
        # quadratic did not predict held-out inliers well enough; the tests compare the
        # examples' JSON with ophreg_rt.one_graph's, which would catch a change of either.
        "auto_gain": QuadraticConfig().auto_gain,
        "no_gain_words": "the quadratic predicts held-out inliers {gain} times as far as the "
                         "affine, not below {auto_gain}",
        "max_pixels": MAX_PIXELS,
        "max_threads": MAX_THREADS,
        "checker_tiles": CHECKER_TILES,
    }


def rendered() -> str:
    return json.dumps(contract_document(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the file differs from the contract")
    args = parser.parse_args(argv)
    text = rendered()
    if args.check:
        current = CONTRACT_JSON.read_text() if CONTRACT_JSON.is_file() else ""
        if current != text:
            print(f"{CONTRACT_JSON}: stale; run python {Path(__file__).as_posix()}",
                  file=sys.stderr)
            return 1
        return 0
    CONTRACT_JSON.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
