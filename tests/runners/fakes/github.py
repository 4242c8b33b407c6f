"""A loopback fake of the GitHub REST API for workflow runs (the parts the github_actions runner uses),
following /work/shared/RUNNERS.md:

    POST /repos/{o}/{r}/actions/workflows/{w}/dispatches  -> 200 {"workflow_run_id","run_url","html_url"}
                                                            (204 without details: `no_details`)
    GET  /repos/{o}/{r}/actions/runs/{id}                 -> {"id","status","conclusion","html_url",...}
    POST /repos/{o}/{r}/actions/runs/{id}/cancel          -> 202, the run ends completed/cancelled (409 if done)

Requests without `Authorization: Bearer <token>` (when `token` is set) get 401 "Bad credentials".
A dispatched run shows "queued" on its first poll, then "in_progress", then "completed" with
`conclusion` after `polls` polls, unless held, in which case it stays in_progress until `finish`.
"""

from __future__ import annotations

import threading
from collections import deque

from . import Responses, Scripted
from .recorder import Recorder, Req

HTML_BASE = "https://github.example.test"


class GhRun:
    def __init__(self, run_id: int, owner: str, repo: str, workflow: str, dispatch: Req, conclusion: str,
                 polls: int, hold: bool):
        self.id = run_id
        self.owner, self.repo, self.workflow = owner, repo, workflow
        self.dispatch = dispatch
        self.run = Scripted(["queued", "in_progress"], ("completed", conclusion), polls=polls, hold=hold)
        self.canceled = False

    @property
    def html_url(self) -> str:
        return f"{HTML_BASE}/{self.owner}/{self.repo}/actions/runs/{self.id}"


class FakeGitHub(Recorder):
    def __init__(self, token: str | None = "ghp_testtoken", first_run_id: int = 12345678901):
        super().__init__()
        self.token = token
        self.runs: dict[int, GhRun] = {}
        self._next_id = first_run_id
        self._rlock = threading.Lock()
        self.conclusion = "success"
        self.conclusion_queue: deque = deque()   # per dispatch, consumed first: conclusions
        self.polls = 2
        self.hold = False
        self.no_details = False
        self.dispatch_answers = Responses()
        self.poll_answers = Responses()
        self.route("POST", r"/repos/([^/]+)/([^/]+)/actions/workflows/([^/]+)/dispatches", self._dispatch)
        self.route("GET", r"/repos/([^/]+)/([^/]+)/actions/runs/(\d+)", self._get_run)
        self.route("POST", r"/repos/([^/]+)/([^/]+)/actions/runs/(\d+)/cancel", self._cancel)

    # ------------------------------------------------------------- test controls

    def script(self, conclusion: str = "success", polls: int = 2, hold: bool = False):
        self.conclusion, self.polls, self.hold = conclusion, polls, hold
        return self

    def only_run(self) -> GhRun:
        assert len(self.runs) == 1, f"expected one dispatched run, got {sorted(self.runs)}"
        return next(iter(self.runs.values()))

    def finish(self, run_id: int, conclusion: str = "success"):
        self.runs[int(run_id)].run.finish(("completed", conclusion))

    def dispatches(self) -> list[Req]:
        return self.matching("POST", r"/repos/[^/]+/[^/]+/actions/workflows/[^/]+/dispatches")

    def cancels(self) -> list[Req]:
        return self.matching("POST", r"/repos/[^/]+/[^/]+/actions/runs/\d+/cancel")

    # ------------------------------------------------------------- handlers

    def _auth(self, req: Req):
        if self.token is None:
            return None
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
                             "status": "401"}
        return None

    def _dispatch(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        canned = self.dispatch_answers.next()
        if canned is not None:
            return canned
        owner, repo, wf = req.match.groups()
        with self._rlock:
            rid = self._next_id
            self._next_id += 1
            conclusion = self.conclusion_queue.popleft() if self.conclusion_queue else self.conclusion
            run = GhRun(rid, owner, repo, wf, req, conclusion, self.polls, self.hold)
            self.runs[rid] = run
        if self.no_details:
            return 204, {}, None
        return 200, {}, {"workflow_run_id": rid,
                         "run_url": f"{self.url}/repos/{owner}/{repo}/actions/runs/{rid}",
                         "html_url": run.html_url}

    def _find(self, req: Req):
        owner, repo, rid = req.match.group(1), req.match.group(2), int(req.match.group(3))
        run = self.runs.get(rid)
        if run is None or (run.owner, run.repo) != (owner, repo):
            return None
        return run

    def _get_run(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        run = self._find(req)
        if run is None:
            return 404, {}, {"message": "Not Found", "status": "404"}
        canned = self.poll_answers.next()
        if canned is not None:
            return canned
        st = run.run.poll()
        status, conclusion = st if isinstance(st, tuple) else (st, None)
        return 200, {}, {"id": run.id, "name": "deploy", "event": "workflow_dispatch", "status": status,
                         "conclusion": conclusion, "html_url": run.html_url,
                         "url": f"{self.url}/repos/{run.owner}/{run.repo}/actions/runs/{run.id}",
                         "run_attempt": 1, "created_at": "2026-12-03T10:00:00Z", "updated_at": "2026-12-03T10:00:05Z"}

    def _cancel(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        run = self._find(req)
        if run is None:
            return 404, {}, {"message": "Not Found", "status": "404"}
        if run.run.done:
            return 409, {}, {"message": "Cannot cancel a workflow run that is completed.", "status": "409"}
        run.canceled = True
        run.run.finish(("completed", "cancelled"))
        return 202, {}, {}
