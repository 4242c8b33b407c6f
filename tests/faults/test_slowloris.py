"""Connections that hold a slot and send nothing useful (GATEWAY_HEADER_TIMEOUT_SECS=2): silent, one
byte, a partial or complete HTTP/2 preface, preface + SETTINGS, an idle HTTP/1.1 keep-alive
connection, an idle h2c connection that answers PINGs. The server closes each within the timeout
plus a margin while other clients are served fast. Also the connection cap
(GATEWAY_MAX_CONNECTIONS) and the raised soft RLIMIT_NOFILE.
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import time

import pytest
import requests

from conftest import metric_value, message_of, wait_until

HEADER_TIMEOUT = 2
MARGIN = 2.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
FLAVOURS = {
    "silent": b"",
    "one byte P": b"P",
    "partial h2 preface": b"PRI * HTTP/2.0\r\n",
    "complete h2 preface": PREFACE,
    "h2 preface + SETTINGS": PREFACE + EMPTY_SETTINGS,
}


def sqlite_url(tmp_path) -> str:
    return f"sqlite://{tmp_path}/gw.db?mode=rwc"


def start(gateways, tmp_path, name, **env):
    e = {"GATEWAY_HEADER_TIMEOUT_SECS": str(HEADER_TIMEOUT)}
    e.update({k: str(v) for k, v in env.items()})
    return gateways.start(name, sqlite_url(tmp_path), e)


def is_closed_now(s: socket.socket) -> bool | None:
    """Drains what the server sent; True when it closed the connection, False when still open."""
    try:
        while True:
            data = s.recv(65536)
            if data == b"":
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        return True


def wait_closed(socks: dict[int, tuple[str, socket.socket]], deadline: float) -> dict[int, str]:
    """Waits (poll, bounded by `deadline`) until the server closed each socket; returns those still open."""
    poller = select.poll()
    open_ = dict(socks)
    for fd in open_:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    # Sockets closed before we started polling show up at once as readable.
    while open_:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ev in poller.poll(min(left, 0.2) * 1000):
            if fd in open_ and is_closed_now(open_[fd][1]):
                poller.unregister(fd)
                del open_[fd]
    return {fd: name for fd, (name, _s) in open_.items()}


def connect(port: int, payload: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        s.sendall(payload)
    s.setblocking(False)
    return s


def test_slow_and_silent_connections_are_closed_and_others_are_served_fast(gateways, tmp_path):
    svc = start(gateways, tmp_path, "slowloris")
    per_flavour = 220
    socks: dict[int, tuple[str, socket.socket]] = {}
    try:
        for i in range(per_flavour):
            for name, payload in FLAVOURS.items():
                s = connect(svc.port, payload)
                socks[s.fileno()] = (name, s)
        opened_at = time.monotonic()
        print(f"[faults] {len(socks)} slow sockets open")

        latencies, statuses = [], []
        for _ in range(200):
            t = time.perf_counter()
            try:
                r = requests.get(svc.url + "/healthz", timeout=5, headers={"Connection": "close"})
                statuses.append(r.status_code)
            except requests.RequestException as e:
                statuses.append(str(e))
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"[faults] /healthz with {len(socks)} slow sockets: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")

        still_open = wait_closed(socks, opened_at + HEADER_TIMEOUT + MARGIN)
        by_flavour: dict[str, int] = {}
        for name in still_open.values():
            by_flavour[name] = by_flavour.get(name, 0) + 1
        took = time.monotonic() - opened_at
    finally:
        for _name, s in socks.values():
            s.close()

    errors = []
    bad = [s for s in statuses if s != 200]
    if bad:
        errors.append(f"{len(bad)} of 200 /healthz requests failed meanwhile: {bad[:5]}")
    if p99 >= 0.050:
        errors.append(f"/healthz p99 {p99 * 1000:.1f} ms >= 50 ms while slow connections are open")
    if still_open:
        errors.append(f"{len(still_open)} of {len(socks)} slow connections still open {took:.1f} s after opening "
                      f"(header timeout {HEADER_TIMEOUT} s + {MARGIN} s margin), by flavour: {by_flavour}")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert requests.get(svc.url + "/healthz", timeout=5).status_code == 200
    assert not errors, "slowloris:\n" + "\n".join(errors)


def read_http1_response(s: socket.socket, deadline: float) -> tuple[int, dict, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body


def test_idle_http1_keep_alive_connection_is_closed(gateways, tmp_path):
    svc = start(gateways, tmp_path, "keepalive")
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
    try:
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{svc.port}\r\n\r\n".encode())
        status, headers, _ = read_http1_response(s, time.monotonic() + 5)
        assert status == 200, status
        assert headers.get("connection", "").lower() != "close", f"the server did not keep the connection alive: {headers}"
        idle_from = time.monotonic()
        s.setblocking(False)
        still = wait_closed({s.fileno(): ("keep-alive", s)}, idle_from + HEADER_TIMEOUT + MARGIN)
        took = time.monotonic() - idle_from
    finally:
        s.close()
    print(f"[faults] idle keep-alive HTTP/1.1: {'still open' if still else 'closed'} after {took:.1f} s")
    assert not still, f"idle keep-alive HTTP/1.1 connection still open {took:.1f} s after its response (header timeout {HEADER_TIMEOUT} s)"


def test_idle_h2c_connection_answering_pings_is_closed(gateways, tmp_path):
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    svc = start(gateways, tmp_path, "h2idle")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=5)
    pings, closed_by = 0, None
    try:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"),
                                (":authority", f"127.0.0.1:{svc.port}")], end_stream=True)
        s.sendall(conn.data_to_send())
        status, ended = None, False
        deadline = time.monotonic() + 5
        while not ended:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            data = s.recv(65536)
            assert data, "connection closed before the h2 response"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = dict(ev.headers).get(":status")
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    ended = True
            out = conn.data_to_send()
            if out:
                s.sendall(out)
        assert status == "200", f"h2c GET /healthz answered {status}"

        # Idle: only answer what the server sends (PING ACKs and SETTINGS ACKs are automatic).
        idle_from = time.monotonic()
        limit = idle_from + HEADER_TIMEOUT + 4.0
        while closed_by is None and time.monotonic() < limit:
            s.settimeout(max(0.01, min(0.5, limit - time.monotonic())))
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed_by = "reset"
                break
            if not data:
                closed_by = "EOF"
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # A frame after the server's GOAWAY (h2's graceful close pings once more): the
                # client library has already closed its side.
                closed_by = closed_by or "GOAWAY"
                break
            for ev in events:
                if isinstance(ev, h2.events.PingReceived):
                    pings += 1
                if isinstance(ev, h2.events.ConnectionTerminated):
                    closed_by = f"GOAWAY ({ev.error_code!r})"
            out = conn.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except (BrokenPipeError, ConnectionResetError):
                    closed_by = closed_by or "reset"
        took = time.monotonic() - idle_from
        if closed_by is not None and closed_by.startswith("GOAWAY"):
            # A GOAWAY must be followed by the socket closing, not by a connection left open.
            eof_by = time.monotonic() + 3.0
            eof = False
            while time.monotonic() < eof_by and not eof:
                s.settimeout(max(0.01, eof_by - time.monotonic()))
                try:
                    eof = not s.recv(65536)
                except socket.timeout:
                    break
                except (ConnectionResetError, BrokenPipeError):
                    eof = True
            assert eof, f"server sent {closed_by} but kept the socket open 3 s later"
    finally:
        s.close()
    print(f"[faults] idle h2c: closed by {closed_by} after {took:.1f} s, {pings} PINGs answered")
    assert closed_by is not None, (f"idle h2c connection (answering {pings} PINGs) still open {took:.1f} s after its "
                                   f"last response (header timeout {HEADER_TIMEOUT} s)")


def test_connection_cap_refuses_and_logs_then_recovers(gateways, tmp_path):
    svc = start(gateways, tmp_path, "conncap", GATEWAY_MAX_CONNECTIONS=50)
    socks: dict[int, tuple[str, socket.socket]] = {}
    try:
        for _ in range(60):
            s = connect(svc.port, b"")
            socks[s.fileno()] = ("silent", s)
        opened_at = time.monotonic()
        logged = svc.wait_log(lambda lines: any("connection limit reached" in message_of(l) for l in lines), within=3)
        still_open = wait_closed(socks, opened_at + HEADER_TIMEOUT + MARGIN)
    finally:
        for _n, s in socks.values():
            s.close()
    served = wait_until(lambda: requests.get(svc.url + "/healthz", timeout=2).status_code == 200, within=3)
    refused = metric_value(requests.get(svc.url + "/metrics", timeout=5).text, "automation_http_connections_refused_total") if served else None
    errors = []
    if not logged:
        errors.append("no log line with 'connection limit reached' after opening 60 connections with GATEWAY_MAX_CONNECTIONS=50")
    if still_open:
        errors.append(f"{len(still_open)} of 60 silent connections still open after the header timeout + margin")
    if not served:
        errors.append("/healthz not served once the silent connections were closed")
    if refused is None or refused < 10:
        errors.append(f"automation_http_connections_refused_total = {refused} (want >= 10)")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert not errors, "connection cap:\n" + "\n".join(errors)


def limits_nofile(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return parts[3], parts[4]
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def test_soft_open_files_limit_is_raised_to_the_hard_limit(gateways, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Start it with a low soft limit, as systemd and most shells do, so the raise is observable.
    low = 1024 if hard == resource.RLIM_INFINITY or hard > 1024 else max(64, hard // 2)

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    svc = gateways.start("rlimit", sqlite_url(tmp_path), {"GATEWAY_HEADER_TIMEOUT_SECS": str(HEADER_TIMEOUT)}, preexec_fn=lower)
    got_soft, got_hard = limits_nofile(svc.pid)
    print(f"[faults] started with soft {low} hard {hard}; process has soft {got_soft} hard {got_hard}")
    assert got_soft == got_hard, f"soft 'Max open files' {got_soft} != hard {got_hard} (started with soft {low})"
