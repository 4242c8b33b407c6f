"""A loopback fake of the Jenkins remote API (the parts the jenkins runner uses), following
/work/shared/RUNNERS.md:

    POST {prefix}/job/a/job/b/buildWithParameters     -> 201 + Location: {base}/queue/item/N/ (303 optional)
    GET  {prefix}/queue/item/N/api/json               -> {"id","blocked","buildable","why","cancelled","executable"}
    POST {prefix}/queue/cancelItem?id=N               -> 204, the item becomes cancelled
    GET  {prefix}/job/a/job/b/B/api/json[?tree=...]   -> {"building","result","number","url"}
    POST {prefix}/job/a/job/b/B/stop                  -> 200, the build ends ABORTED

Every request must carry `Authorization: Basic base64(user:token)` (401 otherwise).
A triggered build sits in the queue for `queue_polls` polls of its item (or until `start(N)` when
`hold_queue`), then is building for `build_polls` polls of the build (or until `finish(N, result)`
when `hold_build`), then ends with `result`.
"""

from __future__ import annotations

import base64
import threading
from collections import deque

from . import Responses, Scripted
from .recorder import Recorder, Req


class JenkinsBuild:
    def __init__(self, item: int, job_path: str, trigger: Req, queue_polls: int, hold_queue: bool,
                 build_polls: int, hold_build: bool, result: str):
        self.item = item
        self.job_path = job_path          # e.g. "job/ops/job/deploy-app"
        self.trigger = trigger
        self.queue = Scripted(["queued"], "started", polls=queue_polls, hold=hold_queue)
        self.build = Scripted(["building"], result, polls=build_polls, hold=hold_build)
        self.number: int | None = None
        self.cancelled = False
        self.stopped = False


class FakeJenkins(Recorder):
    def __init__(self, user: str = "deployer", token: str | None = "jenkins-test-token", prefix: str = "",
                 first_item: int = 301, first_number: int = 5):
        super().__init__()
        self.user = user
        self.token = token
        self.prefix = prefix.rstrip("/")
        self.base = self.url + self.prefix
        self.builds: dict[int, JenkinsBuild] = {}     # by queue item id
        self._next_item = first_item
        self._next_number = first_number
        self._jlock = threading.Lock()
        # scripting of the next triggered builds
        self.queue_polls = 1
        self.hold_queue = False
        self.build_polls = 2
        self.hold_build = False
        self.result = "SUCCESS"
        self.result_queue: deque = deque()   # per trigger, consumed first: results
        self.trigger_status = 201
        self.relative_location = False
        self.trigger_answers = Responses()
        self.poll_answers = Responses()
        p = self.prefix.replace(".", r"\.")
        self.route("POST", p + r"/((?:job/[^/]+/)*job/[^/]+)/buildWithParameters/?", self._trigger)
        self.route("GET", p + r"/queue/item/(\d+)/api/json", self._item)
        self.route("POST", p + r"/queue/cancelItem", self._cancel_item)
        self.route("GET", p + r"/((?:job/[^/]+/)*job/[^/]+)/(\d+)/api/json", self._build)
        self.route("POST", p + r"/((?:job/[^/]+/)*job/[^/]+)/(\d+)/stop", self._stop)

    # ------------------------------------------------------------- test controls

    def script(self, result: str = "SUCCESS", queue_polls: int = 1, build_polls: int = 2,
               hold_queue: bool = False, hold_build: bool = False):
        self.result, self.queue_polls, self.build_polls = result, queue_polls, build_polls
        self.hold_queue, self.hold_build = hold_queue, hold_build
        return self

    def only_build(self) -> JenkinsBuild:
        assert len(self.builds) == 1, f"expected one triggered Jenkins build, got items {sorted(self.builds)}"
        return next(iter(self.builds.values()))

    def start(self, item: int):
        """Lets a held queue item start building."""
        self.builds[item].queue.finish("started")

    def finish(self, item: int, result: str = "SUCCESS"):
        self.builds[item].build.finish(result)

    def item_url(self, item: int) -> str:
        return f"{self.base}/queue/item/{item}/"

    def build_url(self, b: JenkinsBuild) -> str:
        return f"{self.base}/{b.job_path}/{b.number}/"

    def expected_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()

    def triggers(self) -> list[Req]:
        return self.matching("POST", self.prefix + r"/.*/buildWithParameters/?")

    def cancel_items(self) -> list[Req]:
        return self.matching("POST", self.prefix + r"/queue/cancelItem")

    def stops(self) -> list[Req]:
        return self.matching("POST", self.prefix + r"/.*/\d+/stop")

    # ------------------------------------------------------------- handlers

    def _auth(self, req: Req):
        if self.token is None:
            return None
        if req.headers.get("authorization") != self.expected_auth():
            return 401, {"WWW-Authenticate": 'Basic realm="Jenkins"'}, "<html><body>Unauthorized</body></html>"
        return None

    def _trigger(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        canned = self.trigger_answers.next()
        if canned is not None:
            return canned
        with self._jlock:
            item = self._next_item
            self._next_item += 1
            b = JenkinsBuild(item, req.match.group(1), req, self.queue_polls, self.hold_queue,
                             self.build_polls, self.hold_build,
                             self.result_queue.popleft() if self.result_queue else self.result)
            self.builds[item] = b
        loc = f"{self.prefix}/queue/item/{item}/" if self.relative_location else self.item_url(item)
        return self.trigger_status, {"Location": loc}, None

    def _ensure_number(self, b: JenkinsBuild):
        with self._jlock:
            if b.number is None:
                b.number = self._next_number
                self._next_number += 1

    def _item(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        b = self.builds.get(int(req.match.group(1)))
        if b is None:
            return 404, {}, "<html><body>Not Found</body></html>"
        canned = self.poll_answers.next()
        if canned is not None:
            return canned
        body = {"_class": "hudson.model.Queue$WaitingItem", "id": b.item, "blocked": False, "buildable": True,
                "stuck": False, "cancelled": b.cancelled, "why": "Waiting for next available executor",
                "task": {"name": b.job_path.split("/")[-1]}, "executable": None}
        if b.cancelled:
            body["_class"] = "hudson.model.Queue$CancelledItem"
            body["why"] = None
            return 200, {}, body
        st = b.queue.poll()
        if st == "started":
            self._ensure_number(b)
            body["_class"] = "hudson.model.Queue$LeftItem"
            body["why"] = None
            body["executable"] = {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                                  "number": b.number, "url": self.build_url(b)}
        return 200, {}, body

    def _cancel_item(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        try:
            b = self.builds.get(int(req.query.get("id", "")))
        except ValueError:
            b = None
        if b is None or b.number is not None:
            return 422, {}, "<html><body>no such item</body></html>"
        b.cancelled = True
        return 204, {}, None

    def _find_build(self, req: Req):
        path, num = req.match.group(1), int(req.match.group(2))
        for b in list(self.builds.values()):
            if b.job_path == path and b.number == num:
                return b
        return None

    def _build(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        b = self._find_build(req)
        if b is None:
            return 404, {}, "<html><body>Not Found</body></html>"
        canned = self.poll_answers.next()
        if canned is not None:
            return canned
        st = b.build.poll()
        building = st == "building"
        return 200, {}, {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun", "building": building,
                         "result": None if building else st, "number": b.number, "url": self.build_url(b)}

    def _stop(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        b = self._find_build(req)
        if b is None:
            return 404, {}, "<html><body>Not Found</body></html>"
        b.stopped = True
        if not b.build.done:
            b.build.finish("ABORTED")
        return 200, {}, None
