"""A tiny raw HTTP/1.1 client for hostile requests: it streams a request while watching for an early
answer (a server may answer 413/431 and close before the upload ends) and reports what happened.
Every socket operation has a deadline."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass


@dataclass
class RawResult:
    status: int | None  # None: no HTTP answer at all
    headers: dict
    body: bytes
    closed: bool  # the server closed (or reset) the connection
    error: str | None
    elapsed: float
    sent: int
    answered_after: float | None = None  # seconds from the start to a complete answer head (and sized body)

    def json(self):
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _parse(buf: bytes):
    """(status, headers, body) when buf holds a complete answer head (and its body if sized)."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = headers.get("content-length")
    if n is not None and len(rest) < int(n):
        return None
    body = rest[: int(n)] if n is not None else rest
    return status, headers, body


def request(host: str, port: int, head: bytes, body_chunks=(), timeout: float = 30.0, chunk_delay: float = 0.0,
            close_wait: float = 1.0, source_address: tuple | None = None) -> RawResult:
    """Send `head` (request line + headers + blank line, as bytes) then every chunk of `body_chunks`,
    reading the answer as soon as one arrives. Stops sending on an answer, a close or the deadline.
    After a complete answer, waits up to `close_wait` seconds to see whether the server closes."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    answered_after = None
    s = socket.create_connection((host, port), timeout=min(timeout, 10), source_address=source_address)
    s.setblocking(False)
    buf = b""
    closed = False
    error = None
    sent = 0
    def _all():
        yield head
        yield from body_chunks

    it = _all()
    cur = b""
    done_sending = False

    def next_chunk():
        return next(it, None)

    try:
        while time.monotonic() < deadline:
            if not cur and not done_sending:
                nxt = next_chunk()
                if nxt is None:
                    done_sending = True
                else:
                    cur = nxt
                    if chunk_delay and sent:
                        time.sleep(chunk_delay)
            wl = [s] if cur else []
            r, w, _ = select.select([s], wl, [], min(0.5, max(0.0, deadline - time.monotonic())))
            if r:
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError) as e:
                    closed, error = True, repr(e)
                    break
                except BlockingIOError:
                    data = None
                if data == b"":
                    closed = True
                    break
                if data:
                    buf += data
                    if _parse(buf) is not None:
                        # A complete answer: stop uploading; see whether the server closes.
                        answered_after = time.monotonic() - t0
                        cur, done_sending = b"", True
                        s.setblocking(True)
                        s.settimeout(max(close_wait, 0.001))
                        try:
                            more = s.recv(65536)
                            closed = more == b""
                        except (socket.timeout, BlockingIOError):
                            pass
                        except OSError:
                            closed = True
                        break
            if w and cur:
                try:
                    n = s.send(cur)
                    sent += n
                    cur = cur[n:]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError) as e:
                    # The server stopped reading; its answer may still be in our receive buffer.
                    error = repr(e)
                    cur, done_sending = b"", True
                    closed = True
                    s.setblocking(True)
                    s.settimeout(2.0)
                    try:
                        while True:
                            data = s.recv(65536)
                            if not data:
                                break
                            buf += data
                    except OSError:
                        pass
                    break
    finally:
        s.close()
    parsed = _parse(buf) if buf else None
    if parsed is None and buf:
        # Unsized or truncated answer: take the head at least.
        head_part = buf.partition(b"\r\n\r\n")[0]
        try:
            status = int(head_part.split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = None
        return RawResult(status, {}, buf, closed, error, time.monotonic() - t0, sent, answered_after)
    if parsed is None:
        return RawResult(None, {}, b"", closed, error, time.monotonic() - t0, sent, answered_after)
    status, headers, body = parsed
    return RawResult(status, headers, body, closed, error, time.monotonic() - t0, sent, answered_after)


def head_bytes(method: str, path: str, headers: dict | list) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class KeepAlive:
    """A minimal keep-alive HTTP/1.1 client for floods: one request at a time on one socket,
    reconnecting when the server closes. `get` returns (status, headers) or raises OSError."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, source_address: tuple | None = None):
        self.host, self.port, self.timeout, self.source_address = host, port, timeout, source_address
        self.sock = None
        self.buf = b""

    def _connect(self):
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout, source_address=self.source_address)
        self.buf = b""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def request(self, raw: bytes):
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(raw)
                return self._read()
            except (ConnectionResetError, BrokenPipeError, _ClosedBeforeAnswer):
                # A connection the server closed between requests: retry once on a new one.
                self.close()
                if attempt:
                    raise
        raise OSError("unreachable")

    def _read(self):
        while b"\r\n\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise _ClosedBeforeAnswer()
            self.buf += d
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            d = self.sock.recv(65536)
            if not d:
                break
            rest += d
        self.buf = rest[n:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers


class _ClosedBeforeAnswer(OSError):
    pass
