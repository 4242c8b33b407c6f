"""A tiny threaded HTTP endpoint that measures overlap per target.

    ep = OverlapEndpoint(delay=0.15)     # 127.0.0.1:<free port>
    url template: f"{ep.url}/work/{{{{ target }}}}?job={{{{ job_id }}}}"
    ep.visits                            # [Visit(target, job, start, end)] in order of start
    ep.max_overlap["t1"]                 # most requests of one target in progress at once
    ep.close()

Each request (any method) on /work/<target> holds for `delay` seconds and answers 200 "ok". The
count of requests in progress is decremented before the answer is sent, so the client can never
see a request as finished while it still counts here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Visit:
    target: str
    job: str
    start: float
    end: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class OverlapEndpoint:
    def __init__(self, delay: float = 0.15):
        self.delay = delay
        self.lock = threading.Lock()
        self.visits: list[Visit] = []
        self.current: dict[str, int] = {}
        self.max_overlap: dict[str, int] = {}
        ep = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                parts = urlsplit(self.path)
                segs = parts.path.split("/", 2)
                if len(segs) < 3 or segs[1] != "work":
                    self._answer(404, b"not found")
                    return
                target = unquote(segs[2])
                job = parse_qs(parts.query).get("job", [""])[-1]
                v = Visit(target, job, time.monotonic())
                with ep.lock:
                    ep.visits.append(v)
                    c = ep.current.get(target, 0) + 1
                    ep.current[target] = c
                    ep.max_overlap[target] = max(ep.max_overlap.get(target, 0), c)
                time.sleep(ep.delay)
                with ep.lock:
                    ep.current[target] -= 1
                    v.end = time.monotonic()
                self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="overlap-endpoint")
        self._thread.start()

    def snapshot(self) -> list[Visit]:
        with self.lock:
            return [Visit(v.target, v.job, v.start, v.end) for v in self.visits]

    def of(self, target: str) -> list[Visit]:
        return [v for v in self.snapshot() if v.target == target]

    def timeline(self, t0: float | None = None) -> str:
        vs = self.snapshot()
        if not vs:
            return "  (no requests)"
        t0 = vs[0].start if t0 is None else t0
        return "\n".join(f"  {v.target:>4} {v.job[-8:]} {1000 * (v.start - t0):8.0f} ms .. "
                         f"{(1000 * (v.end - t0)) if v.end else float('nan'):8.0f} ms" for v in vs)

    def close(self) -> None:
        try:
            self._server.shutdown()
        finally:
            self._server.server_close()
