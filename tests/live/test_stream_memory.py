"""The memory of 1000 concurrent idle /v1/events/stream connections (VmRSS before and after, each
read once it has settled after the gateway's idle heap trim), every one of them live (each receives
the next job's events).

The issue's target, "1 000 concurrent idle streams cost under 20 MB more RSS", is asserted on their
whole cost, connections included (in this debug build 9.1-10.5 MB in three runs with glibc's malloc,
9.75-11.93 MB in five with mimalloc under the buffer pools; it was 14.5-20.2
MB, one run over the bound, while each stream's request waited on its own read of the event log's
horizon and the thousand requests waiting together fragmented the heap). The
cost of 1000 idle keep-alive HTTP connections on another gateway is printed beside it and bounded
against regressions: hyper keeps an 8 KiB read and an 8 KiB write buffer per HTTP/1 connection,
which the gateway's buffer pools make cost only the pages they touch (about 7 MB for 1000; 22 MB
from glibc's heap, which touches both ends of every chunk), and a connection whose read buffer grows
to 16 KiB (as it did when the protocol was detected by reading the first bytes instead of peeking)
adds about 5 MB."""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time

from conftest import body, get_job, start_gw, submit, wait_terminal

N_STREAMS = 1000
LIMIT_BYTES = 20_000_000
# Regression bound in the debug build: 1000 idle keep-alive connections (about 7 MB measured).
CONNS_LIMIT_BYTES = 12_000_000


def vmrss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_rss_kib(pid: int, at_least: float = 2.5, within: float = 15.0) -> int:
    """VmRSS once it has stopped moving. The gateway trims its heap only in an idle second (at most
    50 requests in the last one), so a sample taken right after a burst races that trim: it reads
    the burst's free heap, which can be 5-10 MB when the machine is busy. Wait at least two trim
    periods, then until two samples a second apart agree within 256 KiB."""
    start = time.monotonic()
    time.sleep(at_least)
    last = vmrss_kib(pid)
    while time.monotonic() - start < within:
        time.sleep(1.0)
        now = vmrss_kib(pid)
        if abs(now - last) <= 256:
            return now
        last = now
    raise AssertionError(f"VmRSS of pid {pid} did not settle within {within:.0f} s (last {last} KiB)")


def open_streams(port: int, n: int, within: float = 60.0) -> tuple[list[socket.socket], dict]:
    """n non-blocking connections each sending GET /v1/events/stream and reading the answer head.
    Returns the sockets (head read, status 200) and a tally of failures."""
    sel = selectors.DefaultSelector()
    req = (f"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n").encode()
    state: dict[socket.socket, dict] = {}
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            raise AssertionError(f"connect: {errno.errorcode.get(rc, rc)}")
        state[s] = {"sent": 0, "buf": b"", "done": False}
        sel.register(s, selectors.EVENT_WRITE)
    ok: list[socket.socket] = []
    bad: dict[str, int] = {}
    deadline = time.monotonic() + within
    pending = n
    while pending and time.monotonic() < deadline:
        for key, mask in sel.select(timeout=0.5):
            s = key.fileobj
            st = state[s]
            try:
                if mask & selectors.EVENT_WRITE:
                    st["sent"] += s.send(req[st["sent"]:])
                    if st["sent"] == len(req):
                        sel.modify(s, selectors.EVENT_READ)
                    continue
                d = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                d = None
                bad[type(e).__name__] = bad.get(type(e).__name__, 0) + 1
            if not d:
                if d is not None:
                    bad["closed"] = bad.get("closed", 0) + 1
                sel.unregister(s)
                s.close()
                pending -= 1
                continue
            st["buf"] += d
            if b"\r\n\r\n" in st["buf"]:
                status = st["buf"].split(b" ", 2)[1]
                sel.unregister(s)
                pending -= 1
                if status == b"200":
                    ok.append(s)
                else:
                    bad[f"status {status.decode()}"] = bad.get(f"status {status.decode()}", 0) + 1
                    s.close()
    for key in list(sel.get_map().values()):
        bad["no head in time"] = bad.get("no head in time", 0) + 1
        key.fileobj.close()
    sel.close()
    return ok, bad


def idle_connections_cost(gateways, n: int) -> int:
    """Bytes of RSS that n idle keep-alive connections (one /healthz request each) add to a fresh gateway."""
    svc = start_gw(gateways, "conns", "sqlite")
    before = settled_rss_kib(svc.pid)
    socks = []
    try:
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            c.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{svc.port}\r\n\r\n".encode())
            socks.append(c)
        for c in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
        return (settled_rss_kib(svc.pid) - before) * 1024
    finally:
        for c in socks:
            c.close()
        svc.stop()


def test_1000_idle_streams_cost_under_20_mb(gateways):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = N_STREAMS + 512
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(hard, want), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want, "cannot raise RLIMIT_NOFILE for 1000 sockets"
    conns = idle_connections_cost(gateways, N_STREAMS)
    svc = start_gw(gateways, "gw", "sqlite", env={"GATEWAY_SSE_HEARTBEAT_MS": 15000})
    # Warm up: a few requests, a few streams opened and closed, one job.
    warm, _ = open_streams(svc.port, 20)
    for s in warm:
        s.close()
    j = submit(svc, body(target="mem-warm", duration_ms=1))
    wait_terminal(svc, j)
    before = settled_rss_kib(svc.pid)

    socks, bad = open_streams(svc.port, N_STREAMS)
    try:
        assert len(socks) == N_STREAMS, f"{len(socks)} of {N_STREAMS} streams opened; failures: {bad}"
        after = settled_rss_kib(svc.pid)
        delta = (after - before) * 1024
        print(f"\n[live] {N_STREAMS} idle streams: VmRSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, "
              f"+{delta / 1e6:.2f} MB ({delta / N_STREAMS / 1024:.1f} KiB per stream); {N_STREAMS} idle keep-alive "
              f"connections alone: +{conns / 1e6:.2f} MB; the streams' own cost: {(delta - conns) / 1e6:.2f} MB")
        assert svc.alive()

        # Every stream is live: each receives the next job's events.
        job_id = submit(svc, body(target="mem-probe", duration_ms=1))
        wait_terminal(svc, job_id)
        sel = selectors.DefaultSelector()
        bufs = {}
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            bufs[s] = b""
        need = set(socks)
        deadline = time.monotonic() + 20
        while need and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if not d:
                    sel.unregister(s)
                    need.discard(s)
                    continue
                bufs[s] += d
                if job_id.encode() in bufs[s] and b"finished" in bufs[s]:
                    sel.unregister(s)
                    need.discard(s)
        sel.close()
        live = sum(1 for s in socks if job_id.encode() in bufs[s] and b"finished" in bufs[s])
        assert live == N_STREAMS, f"only {live} of {N_STREAMS} idle streams delivered the next job's events within 20 s"
        assert get_job(svc, job_id)["status"] == "SUCCESS"
        assert delta < LIMIT_BYTES, f"{N_STREAMS} idle streams cost {delta / 1e6:.1f} MB of RSS in all (want < 20 MB)"
        assert conns < CONNS_LIMIT_BYTES, f"{N_STREAMS} idle keep-alive connections cost {conns / 1e6:.1f} MB of RSS"
    finally:
        for s in socks:
            s.close()
