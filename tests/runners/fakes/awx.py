"""A loopback fake of the AWX / Ansible Automation Platform controller API (the parts the awx runner
uses), following /work/shared/RUNNERS.md:

    POST {prefix}/job_templates/{id}/launch/   -> 201 {"job": N, "ignored_fields": {...}, "id": N, ...}
    GET  {prefix}/jobs/{N}/                    -> {"id", "status", "failed", "started", "finished", ...}
    GET  {prefix}/jobs/{N}/cancel/             -> {"can_cancel": bool}
    POST {prefix}/jobs/{N}/cancel/             -> 202 (or 405 when it can't; `cancel_status`)
    GET  {prefix}/jobs/{N}/stdout/?format=txt  -> text/plain

Requests without `Authorization: Bearer <token>` (when `token` is set) get 401 like AWX.
A launched job shows "pending" on its first poll, then "running", and its terminal status after
`polls` polls, unless held (`hold=True`), in which case it stays "running" until `finish(job, status)`.
"""

from __future__ import annotations

import threading
from collections import deque

from . import Responses, Scripted
from .recorder import Recorder, Req

TERMINAL = ("successful", "failed", "error", "canceled")


class AwxJob:
    def __init__(self, job_id: int, template_id: int, launch: Req, terminal: str, polls: int, hold: bool, stdout: str):
        self.id = job_id
        self.template_id = template_id
        self.launch = launch
        self.run = Scripted(["pending", "running"], terminal, polls=polls, hold=hold)
        self.stdout = stdout
        self.canceled = False

    @property
    def status(self) -> str:
        return self.run.peek()


class FakeAwx(Recorder):
    def __init__(self, token: str | None = "awx-test-token", api_prefix: str = "/api/v2", templates=(42,),
                 first_job_id: int = 17):
        super().__init__()
        self.token = token
        self.api_prefix = api_prefix.rstrip("/")
        self.templates = set(templates)
        self.jobs: dict[int, AwxJob] = {}
        self._next_id = first_job_id
        self._jlock = threading.Lock()
        # scripting of the next launched jobs
        self.terminal = "successful"
        self.polls = 2
        self.hold = False
        self.stdout = "\n".join(f"stdout-line-{i:02d}" for i in range(1, 31)) + "\n"
        self.ignored_fields: dict = {}
        self.terminal_queue: deque = deque()   # per launch, consumed first: terminal statuses
        self.launch_status = 201
        self.cancel_status = 202
        # canned answers (status, headers, body) consumed before the normal behaviour
        self.launch_answers = Responses()
        self.poll_answers = Responses()
        self.cancel_answers = Responses()
        self.launched = threading.Event()
        p = self.api_prefix.replace(".", r"\.")
        self.route("POST", p + r"/job_templates/(\d+)/launch/", self._launch)
        self.route("GET", p + r"/jobs/(\d+)/", self._job)
        self.route("GET", p + r"/jobs/(\d+)/cancel/", self._can_cancel)
        self.route("POST", p + r"/jobs/(\d+)/cancel/", self._cancel)
        self.route("GET", p + r"/jobs/(\d+)/stdout/", self._stdout)

    # ------------------------------------------------------------- test controls

    def script(self, terminal: str = "successful", polls: int = 2, hold: bool = False, stdout: str | None = None):
        self.terminal, self.polls, self.hold = terminal, polls, hold
        if stdout is not None:
            self.stdout = stdout
        return self

    def finish(self, job_id: int, status: str = "successful"):
        self.jobs[int(job_id)].run.finish(status)

    def job(self, job_id) -> AwxJob:
        return self.jobs[int(job_id)]

    def only_job(self) -> AwxJob:
        assert len(self.jobs) == 1, f"expected one launched AWX job, got {sorted(self.jobs)}"
        return next(iter(self.jobs.values()))

    def launches(self) -> list[Req]:
        return self.matching("POST", self.api_prefix + r"/job_templates/\d+/launch/")

    def cancels(self) -> list[Req]:
        return self.matching("POST", self.api_prefix + r"/jobs/\d+/cancel/")

    def polls_of(self, job_id) -> list[Req]:
        return self.matching("GET", self.api_prefix + rf"/jobs/{int(job_id)}/")

    def stdout_requests(self) -> list[Req]:
        return self.matching("GET", self.api_prefix + r"/jobs/\d+/stdout/")

    # ------------------------------------------------------------- handlers

    def _auth(self, req: Req):
        if self.token is None:
            return None
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, {"detail": "Authentication credentials were not provided."}
        return None

    def _launch(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        canned = self.launch_answers.next()
        if canned is not None:
            return canned
        tid = int(req.match.group(1))
        if tid not in self.templates:
            return 404, {}, {"detail": "Not found."}
        with self._jlock:
            jid = self._next_id
            self._next_id += 1
            terminal = self.terminal_queue.popleft() if self.terminal_queue else self.terminal
            job = AwxJob(jid, tid, req, terminal, self.polls, self.hold, self.stdout)
            self.jobs[jid] = job
        self.launched.set()
        url = f"{self.api_prefix}/jobs/{jid}/"
        body = {"job": jid, "ignored_fields": dict(self.ignored_fields), "id": jid, "type": "job", "url": url,
                "status": "pending", "failed": False, "job_template": tid}
        return self.launch_status, {"Location": url}, body

    def _get(self, req: Req):
        jid = int(req.match.group(1))
        return self.jobs.get(jid)

    def _job(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        job = self._get(req)
        if job is None:
            return 404, {}, {"detail": "Not found."}
        canned = self.poll_answers.next()
        if canned is not None:
            return canned
        st = job.run.poll()
        done = st in TERMINAL
        return 200, {}, {"id": job.id, "type": "job", "status": st, "failed": st in ("failed", "error"),
                         "started": "2026-12-03T10:00:00.000000Z" if st != "pending" else None,
                         "finished": "2026-12-03T10:00:05.000000Z" if done else None,
                         "elapsed": 5.0 if done else 0.0, "job_explanation": "",
                         "job_template": job.template_id}

    def _can_cancel(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        job = self._get(req)
        if job is None:
            return 404, {}, {"detail": "Not found."}
        return 200, {}, {"can_cancel": job.status not in TERMINAL}

    def _cancel(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        job = self._get(req)
        if job is None:
            return 404, {}, {"detail": "Not found."}
        canned = self.cancel_answers.next()
        if canned is not None:
            return canned
        if job.status in TERMINAL or self.cancel_status == 405:
            return 405, {}, {"detail": 'Method "POST" not allowed.'}
        job.canceled = True
        job.run.finish("canceled")
        return self.cancel_status, {}, None

    def _stdout(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        job = self._get(req)
        if job is None:
            return 404, {}, {"detail": "Not found."}
        if req.query.get("format") != "txt":
            return 200, {}, {"content": job.stdout, "range": {"start": 0, "end": len(job.stdout)}}
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, job.stdout
