"""PostgreSQL behind a pooler that swallows notifications (as transaction-mode PgBouncer and RDS
Proxy do: LISTEN is accepted, nothing is ever delivered). The gateway must notice, say so once in
its log (WARN, naming the pooler and the polling fallback), and keep running jobs.

No PgBouncer of a version that passes sqlx's prepared statements in transaction mode is packaged
here (Debian 12 has 1.18), so the pooler is a wire-level proxy on 127.0.0.1: it forwards the
PostgreSQL protocol both ways and drops the server's NotificationResponse ('A') messages, which is
exactly what a LISTENing client sees through such a pooler.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from conftest import PG_HOST, PG_PORT, PG_USER, level_of, message_of, wait_statuses

WARNING = "notifications do not reach this replica"


class NotifyDroppingProxy:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.dropped = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection((PG_HOST, int(PG_PORT)))
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client), daemon=True).start()

    @staticmethod
    def _client_to_server(client, server):
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        finally:
            server.close()

    def _server_to_client(self, server, client):
        # Every backend message is: type byte, int32 length (which counts itself), body.
        buf = b""
        try:
            while data := server.recv(65536):
                buf += data
                out = bytearray()
                while len(buf) >= 5:
                    length = struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < 1 + length:
                        break
                    msg, buf = buf[:1 + length], buf[1 + length:]
                    if msg[:1] == b"A":
                        self.dropped += 1
                        continue
                    out += msg
                if out:
                    client.sendall(out)
        except OSError:
            pass
        finally:
            client.close()

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def proxy():
    p = NotifyDroppingProxy()
    yield p
    p.close()


def warnings_of(svc) -> list[dict]:
    return [l for l in svc.log_lines() if WARNING in message_of(l)]


def run_jobs(svc, n: int) -> None:
    ids = []
    for i in range(n):
        r = svc.post({"action": "health_check", "target": f"pooler-{i}", "requested_by": "faults@example.com"})
        assert r.status_code == 202, r.text[:200]
        ids.append(r.json()["job_id"])
    statuses = wait_statuses(svc, ids, ["SUCCESS"], within=30)
    assert all(s == "SUCCESS" for s in statuses.values()), statuses


def test_a_pooler_that_drops_notifications_is_detected_and_jobs_still_run(gateways, pg_db, proxy):
    url = f"postgres://{PG_USER}@127.0.0.1:{proxy.port}/{pg_db.name}?sslmode=disable"
    svc = gateways.start("pooled", url, env={"GATEWAY_POLL_INTERVAL_MS": "200"})
    assert svc.wait_log(lambda lines: any(WARNING in message_of(l) for l in lines), within=20), svc.tail()
    found = warnings_of(svc)
    assert len(found) == 1, "warned once, not per reconnect"
    assert level_of(found[0]) == "WARN"
    assert "PgBouncer" in message_of(found[0])
    assert proxy.dropped >= 1, "the probe notification went through the proxy and was dropped"
    run_jobs(svc, 5)


def test_a_direct_connection_does_not_warn(gateways, pg_db):
    svc = gateways.start("direct", pg_db.url)
    run_jobs(svc, 3)
    # The probe's wait is 5 s; past it a lost probe would have warned.
    time.sleep(7)
    assert warnings_of(svc) == [], svc.tail()
