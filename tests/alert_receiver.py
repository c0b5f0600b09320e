"""A webhook receiver for tests: a real HTTP server on loopback that records what arrives.

Its answers are scripted: ``statuses`` are consumed one per request (then ``default``), and a
status may be 'hang' (hold the request ``hang_s`` without answering) or 'garbage' (200 with a
body that is not JSON). ``stop()`` and ``start()`` take it off and back on the same port, so a
client sees connections refused in between.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertReceiver:
    def __init__(self, port: int = 0):
        self.received: list[dict[str, Any]] = []  # every request: time, path, body, status
        self.statuses: list[Any] = []
        self.default: Any = 200
        self.retry_after: str | None = None
        self.hang_s = 30.0
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies that got a 2xx answer."""
        with self._lock:
            return [r["body"] for r in self.received if r["status"] in (200, "garbage")]

    def start(self) -> AlertReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), self._handler())
        self._server.daemon_threads = True
        self._port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AlertReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self) -> Any:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver._next()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with receiver._lock:
                    receiver.received.append(
                        {"at": time.time(), "path": self.path, "body": body, "status": status}
                    )
                if status == "hang":
                    time.sleep(receiver.hang_s)
                    return
                code = 200 if status == "garbage" else int(status)
                payload = b"\x00\xffnot json{" if status == "garbage" else b'{"ok": true}'
                self.send_response(code)
                if receiver.retry_after is not None and code in (429, 503):
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
