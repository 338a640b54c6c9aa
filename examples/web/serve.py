"""Serve the registration page on this machine, with the headers threaded WebAssembly needs.

    python examples/web/serve.py [--model GRAPH] [--port 8000] [--host 127.0.0.1]

then open the address it prints. onnxruntime-web runs its WebAssembly on several threads only
when the page is cross-origin isolated (SharedArrayBuffer), which takes the two headers
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``
on the page; a plain ``python -m http.server`` sends neither, and the page then runs on one thread.

Only a fixed set of files is served (the page, the shared module and contract, onnxruntime-web's
files from this folder's node_modules, and the graph): never a listing of the checkout. The
Content-Security-Policy lets the page load nothing from any other origin, so it never reaches a
CDN, and a patient's images never leave the browser. Standard library only.
"""

from __future__ import annotations

import argparse
import http.server
import sys
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
DEFAULT_MODEL = EXAMPLES.parent / "models" / "registration.onnx"
ORT_DIST = HERE / "node_modules" / "onnxruntime-web" / "dist"
MODEL_ROUTE = "/model.onnx"

#: Route -> file, besides onnxruntime-web's files under /ort/ and the graph.
PAGE_FILES = {
    "/": HERE / "index.html",
    "/index.html": HERE / "index.html",
    "/app.mjs": HERE / "app.mjs",
    "/style.css": HERE / "style.css",
    "/common/registration.mjs": EXAMPLES / "common" / "registration.mjs",
    "/common/contract.json": EXAMPLES / "common" / "contract.json",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    # 'wasm-unsafe-eval' lets WebAssembly compile; blob: is what onnxruntime-web's worker
    # threads may be started from; nothing is allowed from another origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                               "worker-src 'self' blob:; img-src 'self' blob: data:; "
                               "connect-src 'self' blob: data:; style-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    # The page and its code change with the checkout; the graph is revalidated, not refetched.
    "Cache-Control": "no-cache",
}


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler (Range-free GET/HEAD, If-Modified-Since) on a fixed file map."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json",
                      ".onnx": "application/octet-stream", ".css": "text/css",
                      ".html": "text/html; charset=utf-8"}

    def __init__(self, *args, model: Path, quiet: bool, **kwargs):
        self.model = model
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route in PAGE_FILES:
            return str(PAGE_FILES[route])
        if route == MODEL_ROUTE:
            return str(self.model)
        if route.startswith("/ort/"):
            name = route[len("/ort/"):]
            # One plain file name of the package's dist folder; no other path is reachable.
            if name and "/" not in name and "\\" not in name and not name.startswith("."):
                return str(ORT_DIST / name)
        return str(HERE / "not-served")  # absent: a 404

    def list_directory(self, path):  # never reached through translate_path; refused anyway
        self.send_error(404)
        return None

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        if self.path.split("?", 1)[0] == MODEL_ROUTE:
            # The page reports the graph's file name in the result, as the CLI does.
            name = self.model.name.replace('"', "_").encode("ascii", "replace").decode()
            self.send_header("Content-Disposition", f'inline; filename="{name}"')
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the registration page with the "
                                                 "cross-origin isolation headers.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="the registration graph (default: models/registration.onnx; make "
                             "it with: python -m export registration --out "
                             "models/registration.onnx)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"serve.py: error: {args.model}: no such file (export it: python -m export "
              "registration --out models/registration.onnx, or name one with --model)",
              file=sys.stderr)
        return 2
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        print(f"serve.py: error: {ORT_DIST}: onnxruntime-web is not installed (npm ci --prefix "
              f"{HERE.relative_to(Path.cwd()) if HERE.is_relative_to(Path.cwd()) else HERE})",
              file=sys.stderr)
        return 2
    handler = partial(PageHandler, model=args.model.resolve(), quiet=args.quiet)
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as exc:
        print(f"serve.py: error: {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving the registration page at http://{host}:{port}/ (model {args.model}); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
