"""A generic recording HTTP server for wire-format fakes.

    rec = Recorder()                     # listens on 127.0.0.1:<free port>, serves in a daemon thread
    rec.route("POST", r"/api/v2/job_templates/(\\d+)/launch/", handler)
    ... rec.url ...                      # "http://127.0.0.1:PORT"
    rec.requests                         # every request received, in order (Req objects)
    rec.count("POST", r"/api/.*/launch/")
    rec.wait_for(lambda reqs: any(...), within=5)
    rec.close()

A handler gets the `Req` (with `.match`, the re.Match of its route's path regex) and returns
`(status, headers, body)` (also accepted: `(status, body)`, or a bare body meaning 200), where body is

- bytes / str (str is sent as UTF-8; content type text/plain unless headers set one),
- dict / list (sent as JSON, content type application/json unless headers set one),
- None (empty body),
- any other iterable of bytes/str chunks: streamed with Transfer-Encoding: chunked, each chunk flushed
  at once (for watch-style streams; the iterator may block/sleep between chunks).

Routes are matched against the path without the query string with re.fullmatch; the most recently
added route that matches wins (so a test can override a fake's default route). Method "*" matches
any method. Unmatched requests are recorded and answered 404 with a JSON body. A handler that raises
is answered 500 (JSON) and the exception text is kept in `.errors`.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

__all__ = ["Req", "Recorder", "json_response"]


@dataclass
class Req:
    method: str
    path: str
    query: dict            # name -> last value (str)
    headers: dict          # lower-cased name -> value (repeated headers joined with ", ")
    body: bytes
    json: Any = None       # parsed body when it is JSON, else None
    form: dict | None = None  # parsed body when application/x-www-form-urlencoded (name -> last value)
    at: float = 0.0        # time.monotonic() when the request was fully read
    raw_path: str = ""     # path with the query string, as sent
    query_list: dict = field(default_factory=dict)  # name -> [values]
    match: Any = None      # re.Match of the route that handled it (None when unmatched)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def __repr__(self) -> str:  # short, for assertion messages
        b = self.body[:300]
        return f"Req({self.method} {self.raw_path or self.path} body={b!r})"


def json_response(status: int, obj: Any, headers: dict | None = None):
    return status, dict(headers or {}), obj


def _parse_form(body: bytes) -> tuple[dict, dict]:
    lst = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in lst.items()}, lst


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Recorder:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._rec_lock = threading.Lock()
        self.requests: list[Req] = []
        self.errors: list[str] = []
        self._rec_routes: list[tuple[str, re.Pattern, Callable]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _handle(self):
                rec._rec_serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        self._rec_server = _Server((host, port), Handler)
        self.port = self._rec_server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._rec_thread = threading.Thread(target=self._rec_server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"recorder-{self.port}", daemon=True)
        self._rec_thread.start()

    # ------------------------------------------------------------------ routes

    def route(self, method: str, path_regex: str, handler: Callable[[Req], Any]):
        """Adds a route; returns a token for `unroute`. Later routes take precedence."""
        entry = (method.upper(), re.compile(path_regex), handler)
        with self._rec_lock:
            self._rec_routes.append(entry)
        return entry

    def unroute(self, token) -> None:
        with self._rec_lock:
            if token in self._rec_routes:
                self._rec_routes.remove(token)

    def _rec_find(self, method: str, path: str):
        with self._rec_lock:
            routes = list(self._rec_routes)
        for m, rx, h in reversed(routes):
            if m not in ("*", method):
                continue
            mt = rx.fullmatch(path)
            if mt:
                return h, mt
        return None, None

    # ------------------------------------------------------------------ serving

    def _rec_serve(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command.upper()
        parts = urlsplit(h.path)
        path = parts.path
        qlist = parse_qs(parts.query, keep_blank_values=True)
        headers: dict[str, str] = {}
        for k, v in h.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body = b""
        if "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                n = 0
            body = h.rfile.read(n) if n > 0 else b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                line = h.rfile.readline().strip()
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            body = b"".join(chunks)
        parsed_json = None
        if body:
            try:
                parsed_json = json.loads(body)
            except ValueError:
                parsed_json = None
        form = None
        ct = headers.get("content-type", "").lower()
        if ct.startswith("application/x-www-form-urlencoded"):
            form, _ = _parse_form(body)
        req = Req(method=method, path=path, query={k: v[-1] for k, v in qlist.items()}, headers=headers,
                  body=body, json=parsed_json, form=form, at=time.monotonic(), raw_path=h.path, query_list=qlist)
        handler, mt = self._rec_find(method, path)
        req.match = mt
        with self._rec_lock:
            self.requests.append(req)
        if handler is None:
            self._rec_send(h, method, 404, {}, {"message": "Not Found", "method": method, "path": path})
            return
        try:
            out = handler(req)
        except Exception as e:  # noqa: BLE001 - reported to the test through .errors
            msg = f"{method} {path}: handler raised {type(e).__name__}: {e}"
            with self._rec_lock:
                self.errors.append(msg)
            self._rec_send(h, method, 500, {}, {"message": msg})
            return
        status, hdrs, rbody = self._rec_normalize(out)
        try:
            self._rec_send(h, method, status, hdrs, rbody)
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _rec_normalize(out):
        if isinstance(out, tuple):
            if len(out) == 3:
                return int(out[0]), dict(out[1] or {}), out[2]
            if len(out) == 2:
                return int(out[0]), {}, out[1]
            raise ValueError(f"handler returned a tuple of {len(out)}")
        return 200, {}, out

    @staticmethod
    def _rec_send(h: BaseHTTPRequestHandler, method: str, status: int, hdrs: dict, body) -> None:
        lower = {k.lower() for k in hdrs}
        streaming = not isinstance(body, (bytes, bytearray, str, dict, list, type(None)))
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            if "content-type" not in lower:
                hdrs = {**hdrs, "Content-Type": "application/json"}
        elif isinstance(body, str):
            data = body.encode()
            if "content-type" not in lower:
                hdrs = {**hdrs, "Content-Type": "text/plain; charset=utf-8"}
        elif body is None:
            data = b""
        elif streaming:
            data = None
            if "content-type" not in lower:
                hdrs = {**hdrs, "Content-Type": "application/json"}
        else:
            data = bytes(body)
        h.send_response(status)
        for k, v in hdrs.items():
            h.send_header(k, str(v))
        if streaming:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            try:
                for chunk in body:
                    if isinstance(chunk, str):
                        chunk = chunk.encode()
                    if not chunk:
                        continue
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    h.wfile.flush()
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                h.close_connection = True
            return
        if "content-length" not in lower:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method != "HEAD" and data:
            h.wfile.write(data)
        h.wfile.flush()

    # ------------------------------------------------------------------ queries

    def snapshot(self) -> list[Req]:
        with self._rec_lock:
            return list(self.requests)

    def matching(self, method: str | None, path_regex: str) -> list[Req]:
        rx = re.compile(path_regex)
        m = (method or "*").upper()
        return [r for r in self.snapshot() if (m == "*" or r.method == m) and rx.fullmatch(r.path)]

    def count(self, method: str | None, path_regex: str) -> int:
        return len(self.matching(method, path_regex))

    def clear(self) -> None:
        with self._rec_lock:
            self.requests.clear()

    def wait_for(self, pred: Callable, within: float, every: float = 0.02) -> bool:
        """Polls pred until true or `within` seconds pass. pred takes the request list (snapshot)
        when it accepts one positional argument, else no argument."""
        try:
            takes_arg = len(inspect.signature(pred).parameters) >= 1
        except (TypeError, ValueError):
            takes_arg = False
        deadline = time.monotonic() + within
        while True:
            if pred(self.snapshot()) if takes_arg else pred():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(every)

    def describe(self, last: int = 30) -> str:
        """The last requests, one a line, for assertion messages."""
        return "\n".join(f"  {r.method} {r.raw_path} {r.body[:200]!r}" for r in self.snapshot()[-last:]) or "  (none)"

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        try:
            self._rec_server.shutdown()
        finally:
            self._rec_server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
