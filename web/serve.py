#!/usr/bin/env python3
"""Serves the repository for the browser page (web/index.html) on 127.0.0.1.

    python3 web/serve.py [--port 8000]          then open http://127.0.0.1:8000/web/

Besides the files it answers GET /golden-cases.json (the golden cases in tests/golden and
tests/golden-variants: every registered cell), GET /onnx-cases.json (the ONNX conformance
cases in tests/onnx, each with its model, inputs and expected outputs) and
takes the page's report as POST /result (GET /hold answers once it has come). With --exit-on-result (what .ci/browser uses) it
prints the report and exits 0 if the page passed, 1 if not; --timeout bounds the wait (exit 2).
"""
import argparse
import functools
import http.server
import json
import os
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def onnx_cases():
    """tests/onnx/{backend,ort}/<case>: its model.onnx, test_data_set_0/input_K.pb, output_K.pb."""
    cases = []
    for d in ("backend", "ort"):
        top = os.path.join(ROOT, "tests", "onnx", d)
        for c in sorted(os.listdir(top)):
            ds = os.path.join(top, c, "test_data_set_0")
            if not os.path.isdir(ds):
                continue
            files = sorted(os.listdir(ds), key=lambda f: (f.split("_")[0], int(f.split("_")[1].split(".")[0])))
            rel = f"tests/onnx/{d}/{c}"
            cases.append({
                "name": c,
                "model": f"{rel}/model.onnx",
                "inputs": [f"{rel}/test_data_set_0/{f}" for f in files if f.startswith("input_")],
                "outputs": [f"{rel}/test_data_set_0/{f}" for f in files if f.startswith("output_")],
            })
    return cases


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".js": "text/javascript"}
    result = None
    done = threading.Event()

    def do_GET(self):
        if self.path == "/hold":
            # Held until the page posts its report: a pending request keeps headless Chromium's
            # virtual time (--virtual-time-budget) from running out, so a --screenshot shows
            # the finished page.
            Handler.done.wait(600)
            self.send_response(204)
            self.end_headers()
            return
        if self.path == "/onnx-cases.json":
            self.send_json(onnx_cases())
            return
        if self.path == "/golden-cases.json":
            self.send_json([
                f"tests/{d}/{f}"
                for d in ("golden", "golden-variants")
                for f in sorted(os.listdir(os.path.join(ROOT, "tests", d)))
                if f.endswith(".safetensors")
            ])
            return
        super().do_GET()

    def send_json(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_POST(self):
        if self.path != "/result":
            self.send_error(404)
            return
        n = int(self.headers.get("Content-Length", "0"))
        try:
            Handler.result = json.loads(self.rfile.read(n))
        except ValueError as e:
            Handler.result = {"pass": False, "error": f"unreadable report: {e}"}
        self.send_response(204)
        self.end_headers()
        Handler.done.set()

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--exit-on-result", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--report", help="also write the page's report (JSON) here")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), functools.partial(Handler, directory=ROOT))
    server.verbose = a.verbose
    print(f"serving {ROOT} on http://127.0.0.1:{a.port}/web/", flush=True)
    if not a.exit_on_result:
        server.serve_forever()
        return
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if not Handler.done.wait(a.timeout):
        print(f"no report from the page within {a.timeout:.0f} s", flush=True)
        sys.exit(2)
    r = Handler.result
    if a.report:
        with open(a.report, "w") as f:
            json.dump(r, f, indent=1)
    print(json.dumps(r, indent=1), flush=True)
    # The page's verdict, and every ONNX case in tests/onnx reported and passed (a page that
    # skipped them does not pass).
    want = len(onnx_cases())
    onnx = r.get("onnx") or []
    onnx_ok = len(onnx) == want and all(c.get("pass") is True for c in onnx)
    if not onnx_ok:
        print(f"ONNX cases: {sum(1 for c in onnx if c.get('pass') is True)} of {want} passed", flush=True)
    sys.exit(0 if r.get("pass") is True and onnx_ok else 1)


if __name__ == "__main__":
    main()
