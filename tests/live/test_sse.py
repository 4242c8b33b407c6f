"""SSE streams: /v1/jobs/{id}/stream (every event, raw wire format, closed after the terminal event,
Last-Event-ID), /v1/events/stream (resume with Last-Event-ID while ~1000 events are produced: every
event exactly once, no gap; filters; heartbeats; auth and action scopes)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import (PROBLEM, BgReader, SseStream, bearer, body, fmt_events, get_events, kinds, start_gw, submit, tokens_file,
                      wait_status, wait_terminal, wait_until)

BACKENDS = ["sqlite", "pg"]
SSE = "text/event-stream"


def assert_stream_ok(s: SseStream, what: str):
    assert s.status == 200, f"{what}: status {s.status}, body {s.body[:500]!r}"
    assert s.headers.get("content-type", "").startswith(SSE), f"{what}: content-type {s.headers.get('content-type')!r}"


def wire_errors(s: SseStream) -> list[str]:
    """Each event block is exactly `id: N`, `event: KIND`, `data: <one-line JSON>` agreeing with the JSON."""
    bad = []
    for ev in s.events:
        names = [ln.partition(":")[0] for ln in ev.lines]
        if sorted(names) != ["data", "event", "id"]:
            bad.append(f"event block lines {ev.lines!r} (want one id, one event, one data line)")
            continue
        for ln in ev.lines:
            if not re.fullmatch(r"(id|event|data): ?\S.*", ln):
                bad.append(f"line {ln!r} is not `field: value`")
        try:
            j = ev.json()
        except ValueError:
            bad.append(f"data is not JSON: {ev.data[:200]!r}")
            continue
        if not re.fullmatch(r"\d+", ev.id or "") or int(ev.id) != j.get("id"):
            bad.append(f"id line {ev.id!r} != data.id {j.get('id')!r}")
        if ev.event != j.get("event"):
            bad.append(f"event line {ev.event!r} != data.event {j.get('event')!r}")
    return bad


# ------------------------------------------------------------------------------ per-job stream


def test_job_stream_sends_every_event_in_wire_format_and_closes_after_the_terminal_one(gateways):
    svc = start_gw(gateways, "gw", "sqlite")
    job_id = submit(svc, target="sse-job", duration_ms=800)
    s = SseStream(svc.port, f"/v1/jobs/{job_id}/stream")
    try:
        assert_stream_ok(s, "job stream")
        s.read_until_end(within=15)
        assert s.ended, f"job stream still open 15 s after the POST of an 800 ms job; got {kinds(s.payloads())}"
        stored = get_events(svc, job_id)
        assert kinds(stored) == ["created", "claimed", "finished"], fmt_events(stored)
        assert s.payloads() == stored, f"stream:\n{fmt_events(s.payloads())}\nGET events:\n{fmt_events(stored)}"
        bad = wire_errors(s)
        assert not bad, "\n".join(bad) + f"\nraw body:\n{s.body.decode(errors='replace')}"
        # The server closes right after the terminal event.
        closed_after = s.ended_at - s.events[-1].t
        assert closed_after < 2.0, f"closed {closed_after:.2f} s after the terminal event"
    finally:
        s.close()

    # A finished job: the whole log at once, then the end.
    t0 = time.monotonic()
    s = SseStream(svc.port, f"/v1/jobs/{job_id}/stream")
    try:
        assert_stream_ok(s, "job stream of a finished job")
        s.read_until_end(within=5)
        assert s.ended, f"the stream of a finished job is still open after 5 s (got {kinds(s.payloads())})"
        assert s.payloads() == stored
        assert time.monotonic() - t0 < 3, f"took {time.monotonic() - t0:.1f} s"
    finally:
        s.close()


def test_job_stream_resumes_after_last_event_id(gateways):
    svc = start_gw(gateways, "gw", "sqlite")
    job_id = submit(svc, target="sse-resume", duration_ms=1500)
    s = SseStream(svc.port, f"/v1/jobs/{job_id}/stream")
    try:
        assert_stream_ok(s, "job stream")
        assert s.read_until(lambda x: [e.event for e in x.events][:2] == ["created", "claimed"], within=10), \
            f"got {[e.event for e in s.events]}"
        assert len(s.events) == 2, f"finished before the drop: {[e.event for e in s.events]}"
        last = s.events[-1].id
    finally:
        s.close()
    s = SseStream(svc.port, f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": last})
    try:
        assert_stream_ok(s, "resumed job stream")
        s.read_until_end(within=10)
        stored = get_events(svc, job_id)
        assert s.ended, f"resumed stream still open after the job ended; got {kinds(s.payloads())}"
        assert s.payloads() == [e for e in stored if e["id"] > int(last)], \
            f"resumed after {last}:\n{fmt_events(s.payloads())}\nstored:\n{fmt_events(stored)}"
    finally:
        s.close()

    # Finished job: resume after the first event -> the rest; after the terminal one -> nothing, closed.
    stored = get_events(svc, job_id)
    for after, want in ((stored[0]["id"], stored[1:]), (stored[-1]["id"], [])):
        s = SseStream(svc.port, f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": str(after)})
        try:
            assert_stream_ok(s, f"job stream after {after}")
            s.read_until_end(within=5)
            assert s.ended, f"stream of a finished job with Last-Event-ID {after} (of {[e['id'] for e in stored]}) still " \
                            f"open after 5 s: nothing more can come (got {kinds(s.payloads())}, {len(s.comments)} comments)"
            assert s.payloads() == want, f"Last-Event-ID {after}: got {kinds(s.payloads())}, want {kinds(want)}"
        finally:
            s.close()


def test_job_stream_of_unknown_job_is_404_problem(gateways):
    svc = start_gw(gateways, "gw", "sqlite")
    s = SseStream(svc.port, f"/v1/jobs/{uuid.uuid4()}/stream")
    try:
        s.read_until_end(within=5)
        assert s.status == 404, f"status {s.status} {s.body[:300]!r}"
        assert s.headers.get("content-type", "").startswith(PROBLEM), s.headers
    finally:
        s.close()


# -------------------------------------------------------------------------------- global stream


N_JOBS = 334  # x 3 events (created, claimed, finished) = 1002 events
POSTERS = 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_stream_resume_delivers_every_event_exactly_once(gateways, request, backend):
    """A client reads ~150 events, drops, and resumes with Last-Event-ID while the rest of ~1000 events
    are still being produced (the replay-then-live hand-over happens under load). If the server drops a
    resumed stream (allowed for a slow client), the client resumes again. The union must hold every
    event of GET /v1/jobs/{id}/events exactly once, in increasing id order per connection."""
    svc = start_gw(gateways, "gw", backend, request, env={"GATEWAY_WORKERS": 32})
    conns: list[tuple[str | None, SseStream]] = []  # (Last-Event-ID sent, stream)
    s = SseStream(svc.port, "/v1/events/stream")
    conns.append((None, s))
    assert_stream_ok(s, "global stream")
    reader = BgReader(s)
    time.sleep(0.3)

    job_ids: list[str] = []
    errors: list[str] = []

    def post(i: int) -> str | None:
        time.sleep(0.05)  # spread the burst over ~2-3 s so the resume lands in the middle of it
        try:
            r = requests.post(svc.url + "/v1/jobs", json=body(target=f"resume-{i % 7}", duration_ms=1), timeout=20)
            if r.status_code != 202:
                errors.append(f"POST {i}: {r.status_code} {r.text[:200]}")
                return None
            return r.json()["job_id"]
        except requests.RequestException as e:
            errors.append(f"POST {i}: {e}")
            return None

    def produce():
        with ThreadPoolExecutor(POSTERS) as ex:
            job_ids.extend(j for j in ex.map(post, range(N_JOBS)) if j)

    producer = threading.Thread(target=produce, daemon=True)
    t0 = time.monotonic()
    producer.start()
    expected: dict[int, dict] = {}
    try:
        wait_until(lambda: len(s.events) >= 150 or s.ended, within=30)
        reader.stop()
        s.close()
        dropped_at = (len(s.events), time.monotonic() - t0)
        assert s.events, "the global stream delivered nothing within 30 s while jobs were being created"
        time.sleep(0.5)  # events are produced while no client is connected
        producing_at_resume = producer.is_alive()
        deadline = time.monotonic() + 60
        while True:
            last = next(c.events[-1].id for _, c in reversed(conns) if c.events)
            s = SseStream(svc.port, "/v1/events/stream", headers={"Last-Event-ID": last})
            conns.append((last, s))
            assert_stream_ok(s, f"resumed global stream #{len(conns) - 1}")
            reader = BgReader(s)
            if not expected:
                producer.join(timeout=90)
                assert not producer.is_alive(), "posting the jobs took over 90 s"
                assert not errors, errors[:5]
                assert len(job_ids) == N_JOBS
                for j in job_ids:
                    wait_terminal(svc, j, within=max(1.0, deadline - time.monotonic()))
                for j in job_ids:
                    for e in get_events(svc, j):
                        expected[e["id"]] = e
            want = set(expected)

            def have() -> set[int]:
                return {i for _, c in conns for i in c.ids()}

            wait_until(lambda: have() >= want or s.ended, within=max(0.5, deadline - time.monotonic()))
            if have() >= want:
                time.sleep(0.5)  # would-be duplicates
            reader.stop()
            if have() >= want or not s.ended or time.monotonic() >= deadline or len(conns) > 10:
                break
        took = time.monotonic() - t0
    finally:
        reader.stop()
        for _, c in conns:
            c.close()

    print(f"\n[live] {backend}: {len(expected)} events of {N_JOBS} jobs in {took:.1f} s; first connection dropped "
          f"after {dropped_at[0]} events at {dropped_at[1]:.2f} s; resumed while still producing: {producing_at_resume}; "
          f"events per connection: {[len(c.events) for _, c in conns]}")
    assert len(expected) == 3 * N_JOBS, f"stored events: {len(expected)} (want {3 * N_JOBS})"
    bad = []
    all_ids: list[int] = []
    for n, (lei, c) in enumerate(conns):
        ids = c.ids()
        all_ids += ids
        if any(b <= a for a, b in zip(ids, ids[1:])):
            back = [(a, b) for a, b in zip(ids, ids[1:]) if b <= a][:5]
            bad.append(f"connection {n}: ids not strictly increasing (e.g. {back})")
        if lei is not None and ids and ids[0] <= int(lei):
            bad.append(f"connection {n} (Last-Event-ID: {lei}) sent id {ids[0]}")
        bad += [f"connection {n}: {w}" for w in wire_errors(c)[:3]]
        for ev in c.events:
            j = ev.json()
            if j.get("id") in expected and j != expected[j["id"]]:
                bad.append(f"event {j['id']} on the stream differs from GET events: {j} vs {expected[j['id']]}")
                break
    dups = len(all_ids) - len(set(all_ids))
    if dups:
        bad.append(f"{dups} events delivered twice")
    missing = sorted(set(expected) - set(all_ids))
    if missing:
        bad.append(f"{len(missing)} events never delivered (gap), e.g. {missing[:10]} "
                   f"({[expected[i]['event'] for i in missing[:10]]})")
    extra = sorted(set(all_ids) - set(expected))
    if extra:
        bad.append(f"{len(extra)} delivered events not in GET events of the jobs: {extra[:10]}")
    if conns[-1][1].ended and missing:
        bad.append("the last resumed stream was ended by the server")
    assert not bad, "\n".join(bad)


def test_global_stream_filters_action_status_target(gateways):
    policy = ("health_check.backoff_ms=100,health_check.max_attempts=2,"
              "restart_service.backoff_ms=100,restart_service.max_attempts=1")
    svc = start_gw(gateways, "gw", "sqlite", env={"GATEWAY_ACTION_POLICY": policy})
    filters = {
        "action=restart_service": lambda e: e["action"] == "restart_service",
        "status=SUCCESS": lambda e: e["status"] == "SUCCESS",
        "status=PENDING": lambda e: e["status"] == "PENDING",
        "target=flt-a": lambda e: e["target"] == "flt-a",
        "action=health_check&status=FAILED&target=flt-b":
            lambda e: (e["action"], e["status"], e["target"]) == ("health_check", "FAILED", "flt-b"),
    }
    streams = {q: SseStream(svc.port, f"/v1/events/stream?{q}") for q in filters}
    try:
        for q, s in streams.items():
            assert_stream_ok(s, q)
        time.sleep(0.3)
        jobs = [submit(svc, body(a, t, duration_ms=5, fail=f)) for a, t, f in [
            ("health_check", "flt-a", False), ("health_check", "flt-b", True), ("health_check", "flt-b", False),
            ("restart_service", "flt-a", False), ("restart_service", "flt-b", True), ("rotate_config", "flt-b", False)]]
        for j in jobs:
            wait_terminal(svc, j, within=20)
        stored = [e for j in jobs for e in get_events(svc, j)]
        bad = []
        for q, s in streams.items():
            want = {e["id"] for e in stored if filters[q](e)}
            assert want, f"test bug: no event matches {q}"
            s.read_until(lambda x, w=want: set(x.ids()) >= w, within=10)
        time.sleep(0.5)
        for q, s in streams.items():
            s.read_for(0.2)
            want = {e["id"] for e in stored if filters[q](e)}
            got = s.ids()
            if sorted(got) != sorted(want) or len(got) != len(set(got)):
                wrong = [e for e in s.payloads() if e["id"] not in want]
                bad.append(f"?{q}: missing {sorted(want - set(got))}, unexpected "
                           f"{[(e['id'], e['event'], e['action'], e['status'], e['target']) for e in wrong]}, "
                           f"duplicates {len(got) - len(set(got))}")
        assert not bad, "\n".join(bad) + "\nall events:\n" + fmt_events(stored)
    finally:
        for s in streams.values():
            s.close()


def test_global_stream_without_last_event_id_starts_after_the_connection(gateways):
    """Spec: "Without Last-Event-ID it starts with events made after the connection"."""
    svc = start_gw(gateways, "gw", "sqlite")
    before = submit(svc, body(target="sse-before", duration_ms=5))
    wait_terminal(svc, before)
    running = submit(svc, body(target="sse-running", duration_ms=2_500))
    wait_status(svc, running, "RUNNING", within=10)
    s = SseStream(svc.port, "/v1/events/stream")
    try:
        assert_stream_ok(s, "global stream")
        s.read_for(0.5)
        after = submit(svc, body(target="sse-after", duration_ms=5))
        wait_terminal(svc, after)
        wait_terminal(svc, running)
        want = [e for e in get_events(svc, after)] + [get_events(svc, running)[-1]]
        s.read_until(lambda x: set(x.ids()) >= {e["id"] for e in want}, within=10)
        s.read_for(0.3)
        got = sorted(s.payloads(), key=lambda e: e["id"])

        def brief(evs):
            return [(e["id"], e["event"], e["target"]) for e in evs]

        assert got == sorted(want, key=lambda e: e["id"]), \
            f"a new global stream (no Last-Event-ID) sent {brief(got)}; want only the events made after the " \
            f"connection: {brief(sorted(want, key=lambda e: e['id']))}"
    finally:
        s.close()


def test_heartbeat_comments_every_interval(gateways):
    svc = start_gw(gateways, "gw", "sqlite", env={"GATEWAY_SSE_HEARTBEAT_MS": 200})
    job_id = submit(svc, target="sse-hb", duration_ms=10_000)
    wait_status(svc, job_id, "RUNNING", within=10)
    g = SseStream(svc.port, "/v1/events/stream")
    j = SseStream(svc.port, f"/v1/jobs/{job_id}/stream")
    try:
        assert_stream_ok(g, "global stream")
        assert_stream_ok(j, "job stream")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:
            g.pump(0.05)
            j.pump(0.05)
        for name, s in (("global", g), ("job", j)):
            n = len(s.comments)
            assert 5 <= n <= 20, f"{name} stream: {n} comment lines in 2 s with GATEWAY_SSE_HEARTBEAT_MS=200 " \
                                 f"(want about 10): {s.comments[:5]}"
            assert not s.ended, f"{name} stream ended"
        assert kinds(j.payloads()) == ["created", "claimed"], kinds(j.payloads())
    finally:
        g.close()
        j.close()


def test_streams_need_a_token_and_respect_action_scopes(gateways, tmp_path):
    tf = tokens_file(tmp_path / "tokens.yaml", [
        {"name": "hc-bot", "token": "tok-hc", "actions": ["health_check"], "can_read": True, "can_cancel": True},
        {"name": "rs-bot", "token": "tok-rs", "actions": ["restart_service"], "can_read": True, "can_cancel": True},
    ])
    svc = start_gw(gateways, "gw", "sqlite", env={"GATEWAY_AUTH_TOKENS_FILE": tf})
    old = submit(svc, body("restart_service", "auth-old", duration_ms=5), headers=bearer("tok-rs"))
    wait_terminal(svc, old, headers=bearer("tok-rs"))

    for path in ("/v1/events/stream", f"/v1/jobs/{old}/stream"):
        for hdrs, what in (({}, "no token"), (bearer("not-a-token"), "an unknown token")):
            s = SseStream(svc.port, path, headers=hdrs)
            try:
                s.read_until_end(within=5)
                assert s.status == 401, f"GET {path} with {what}: {s.status} {s.body[:300]!r}"
                assert "www-authenticate" in s.headers, s.headers
                assert not s.events
            finally:
                s.close()

    rs = SseStream(svc.port, "/v1/events/stream", headers=bearer("tok-rs"))
    hc = SseStream(svc.port, "/v1/events/stream", headers=bearer("tok-hc"))
    try:
        assert_stream_ok(rs, "rs stream")
        assert_stream_ok(hc, "hc stream")
        time.sleep(0.3)
        hc_job = submit(svc, body("health_check", "auth-hc", duration_ms=5), headers=bearer("tok-hc"))
        rs_job = submit(svc, body("restart_service", "auth-rs", duration_ms=5), headers=bearer("tok-rs"))
        wait_terminal(svc, hc_job, headers=bearer("tok-hc"))
        wait_terminal(svc, rs_job, headers=bearer("tok-rs"))
        rs_want = {e["id"] for e in get_events(svc, rs_job, headers=bearer("tok-rs"))}
        hc_want = {e["id"] for e in get_events(svc, hc_job, headers=bearer("tok-hc"))}
        rs.read_until(lambda x: set(x.ids()) >= rs_want, within=10)
        hc.read_until(lambda x: set(x.ids()) >= hc_want, within=10)
        time.sleep(0.5)
        rs.read_for(0.2)
        hc.read_for(0.2)
        bad = []
        for name, st, want, action in (("restart_service", rs, rs_want, "restart_service"),
                                       ("health_check", hc, hc_want, "health_check")):
            foreign = [(e["action"], e["event"], e["job_id"]) for e in st.payloads() if e["action"] != action]
            if foreign:
                bad.append(f"the {name} token's stream got events of other actions: {foreign}")
            if not want <= set(st.ids()):
                bad.append(f"the {name} token's stream lacks its own job's events: {sorted(want - set(st.ids()))}")
        assert not bad, "\n".join(bad)
    finally:
        rs.close()
        hc.close()

    # Replay of stored events is scoped too.
    s = SseStream(svc.port, "/v1/events/stream", headers={**bearer("tok-rs"), "Last-Event-ID": "0"})
    try:
        assert_stream_ok(s, "replay from 0")
        s.read_until(lambda x: len(x.events) >= 6, within=5)
        s.read_for(0.5)
        assert {e["job_id"] for e in s.payloads()} == {old, rs_job} and len(s.events) == 6, \
            f"replay from 0 with the restart_service token: {[(e['action'], e['event']) for e in s.payloads()]}"
    finally:
        s.close()

    # Another action's job stream is a 404, as if the job did not exist.
    s = SseStream(svc.port, f"/v1/jobs/{hc_job}/stream", headers=bearer("tok-rs"))
    try:
        s.read_until_end(within=5)
        assert s.status == 404 and not s.events, f"job stream of a health_check job with the restart_service token: " \
                                                 f"{s.status} {s.body[:300]!r}"
    finally:
        s.close()
