"""A local fake of a rate-limited external API, for the rate-limit scenario of ``fairness.py``.

    python bench/_fairness_fake_api.py --latency-ms 20      # prints its port, then serves

It runs in its own process and never refuses a request: it only records, per path, the
arrival time and the tokens of each ``POST /<path>`` (JSON ``{"tokens": N}``; it answers
``{"tokens": N}`` after ``--latency-ms``). ``GET /log/<path>`` returns ``[[time, tokens], …]``
so the bench can count requests and tokens in every 60 s window afterwards. Clients call it
with :func:`call_api`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def call_api(url: str, tag: str, tokens: int) -> int:
    """POST one request to the fake API; returns the tokens it says were used."""
    body = json.dumps({"tag": tag, "tokens": tokens}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read())["tokens"])


def fetch_log(base_url: str, path: str) -> list[tuple[float, float]]:
    """Every request the fake API received on ``path``: ``(arrival time, tokens)``, in order."""
    with urllib.request.urlopen(f"{base_url}/log/{path}", timeout=10) as response:
        return [(float(at), float(tokens)) for at, tokens in json.loads(response.read())]


def serve(latency: float) -> None:
    lock = threading.Lock()
    calls: dict[str, list[tuple[float, float]]] = defaultdict(list)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            arrived = time.time()
            length = int(self.headers.get("Content-Length", "0"))
            tokens = float(json.loads(self.rfile.read(length) or b"{}").get("tokens", 0))
            with lock:
                calls[self.path.strip("/")].append((arrived, tokens))
            time.sleep(latency)
            self._answer({"tokens": tokens})

        def do_GET(self) -> None:
            _, _, path = self.path.strip("/").partition("/")
            with lock:
                self._answer(list(calls[path]))

        def _answer(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_port, flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--latency-ms", type=float, default=20.0, help="how long each call takes")
    args = parser.parse_args(argv)
    serve(args.latency_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
