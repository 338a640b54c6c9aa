"""``python -m export {superpoint,superglue,lightglue,pipeline,registration,quantize} ...``: export a graph, prove it, record it.

Each subcommand prints what it wrote and the parity figures it measured against PyTorch,
and exits non-zero when a figure is past its tolerance.
"""

from __future__ import annotations

import argparse
import sys

from . import lightglue, pipeline, quantize, registration, superglue, superpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (superpoint, superglue, lightglue, pipeline, registration, quantize):
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.configure_parser(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
