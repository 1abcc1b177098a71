"""Harbor's health endpoint on loopback, for the role's health gates (the install's, in
harbor_host_state, and the upgrade window's): it serves ``answers`` in turn, the last one
again and again, and counts the requests."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def doc(status: str, **components: str) -> dict[str, Any]:
    """Harbor's health document: the overall status and each component's."""
    return {"status": status,
            "components": [{"name": n, "status": s} for n, s in components.items()]}


class HealthServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[bytes] = [b"{}"]
        self.asked = 0

    def answer(self, *docs: Any) -> None:
        """Serve these (JSON-encoded) from now on, in turn."""
        self.answers = [json.dumps(d).encode() for d in docs]


@contextmanager
def health_server() -> Iterator[HealthServer]:
    served: list[HealthServer] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            s = served[0]
            body = s.answers[min(s.asked, len(s.answers) - 1)]
            s.asked += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.append(HealthServer(f"http://127.0.0.1:{server.server_address[1]}/api/v2.0/health"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
