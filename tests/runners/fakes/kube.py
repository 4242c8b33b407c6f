"""A loopback fake of the Kubernetes API server for the `kubernetes` runner (rollout restart).

Plain HTTP on 127.0.0.1 (built on fakes.recorder.Recorder), speaking the wire format of the
`apps/v1` resources `deployments`, `statefulsets` and `daemonsets`:

- `GET /apis/apps/v1/namespaces/{ns}/{plural}/{name}` -> the object (apiVersion, kind, metadata
  {name, namespace, uid, generation, resourceVersion, annotations, creationTimestamp}, spec
  {replicas, paused, selector, template{metadata{labels, annotations}, spec}}, status{...});
- `PATCH` of the same path: only `Content-Type: application/strategic-merge-patch+json` (others:
  415 Status); the patch is merged into the object (maps merged recursively, `null` deletes, anything
  else replaced), a change under `spec` bumps `metadata.generation`, every patch bumps
  `resourceVersion`; the answer is the patched object;
- the collection `GET .../{plural}` (list, `fieldSelector=metadata.name=X` honoured) and
  `?watch=true` (a chunked stream of `{"type":"ADDED"|"MODIFIED","object":...}` lines, ended after
  `timeoutSeconds`, at most 30 s), in case a client waits by watching;
- `GET /version`, `/api`, `/apis`, `/apis/apps/v1` discovery, minimal;
- anything else under the API: a `404` Status (`reason: NotFound`); a missing object: `404` Status
  `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,...}`;
- a request without `Authorization: Bearer <token>`: `401` Status (it is still recorded);
- fault injection: `fail_next_gets(key, [503, ...])`, `fail_next_patches(key, [403, ...])`.

What the real kube client (kube-rs, as the gateway uses it) was seen to send: `GET` of the object
(`Authorization: Bearer`, no Accept), then `PATCH .../NAME?&fieldManager=kubectl-rollout` with
`Accept: application/json` and `Content-Type: application/strategic-merge-patch+json`; no `/version`
nor discovery requests, no list/watch (it polls with GET). Those routes are here in case that changes.

There are no controllers in an API server, so a scripted controller advances the status after a
PATCH, per object (see `Obj.script`):

- `Controller.manual()`: nothing moves by itself; the test calls `fake.step(key, phase)` with
  phase "observed" (the controller saw the new generation, one pod updated), "surge" (all pods
  updated and available but an old pod still counted in status.replicas / revisions still differ),
  "complete" (rolled out), or "deadline" (Progressing False, reason ProgressDeadlineExceeded);
- `Controller.after_polls(k)`: "observed" at the first GET after the PATCH, "complete" at the k-th;
- `Controller.after_ms(ms)`: "observed" at once, "surge" at ms/2, "complete" at ms after the PATCH;
- `Controller.deadline_after_ms(ms)`: "observed" at once, "deadline" ms after the PATCH;
- `Controller.never()`: the status never moves (the generation is never observed).

Until the controller observes it, the object's status is the one of the previous, finished rollout
(`observedGeneration` = the old generation, every replica count "done"), exactly what a real cluster
shows right after a PATCH: a client that ignores `observedGeneration` thinks it is finished.

`fake.write_kubeconfig(path)` writes a kubeconfig (cluster server http://127.0.0.1:PORT, user with
a bearer token, current-context) for the client's `KUBECONFIG`.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fakes.recorder import Recorder, Req

__all__ = ["FakeKubeApi", "Controller", "PLURALS", "KINDS", "status_404"]

# lower-case kind -> plural, and plural -> API kind
PLURALS = {"deployment": "deployments", "statefulset": "statefulsets", "daemonset": "daemonsets"}
KINDS = {"deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet"}
STRATEGIC = "application/strategic-merge-patch+json"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def status_404(plural: str, name: str) -> dict:
    return _status(404, "NotFound", f'{plural}.apps "{name}" not found',
                   {"name": name, "group": "apps", "kind": plural})


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Controller:
    """How the fake controller advances an object's status after a PATCH."""
    mode: str = "manual"          # manual | polls | ms | deadline | never
    k: int = 0                    # polls for mode "polls"
    ms: int = 0                   # milliseconds for "ms" / "deadline"

    @staticmethod
    def manual() -> "Controller":
        return Controller("manual")

    @staticmethod
    def after_polls(k: int) -> "Controller":
        return Controller("polls", k=k)

    @staticmethod
    def after_ms(ms: int) -> "Controller":
        return Controller("ms", ms=ms)

    @staticmethod
    def deadline_after_ms(ms: int) -> "Controller":
        return Controller("deadline", ms=ms)

    @staticmethod
    def never() -> "Controller":
        return Controller("never")


@dataclass
class Obj:
    plural: str
    namespace: str
    name: str
    body: dict
    script: Controller
    patched_at: float | None = None      # monotonic time of the last PATCH
    polls_since_patch: int = 0           # GETs of the object since the last PATCH
    phase: str = "done"                  # done (previous rollout) | pending | observed | surge | complete | deadline
    phase_at: dict = field(default_factory=dict)   # phase -> monotonic time reached
    served: list = field(default_factory=list)     # the phase each successful GET answered with, in order
    fail_gets: list = field(default_factory=list)  # statuses to answer the next GETs with (fault injection)
    fail_patches: list = field(default_factory=list)  # statuses to answer the next PATCHes with

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.plural, self.namespace, self.name)


def _merge(dst: dict, patch: dict) -> None:
    """Strategic merge for maps (what a restart patch touches): recursive; null deletes a key."""
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class FakeKubeApi:
    def __init__(self, token: str = "ag-kube-test-token-5f2c", tick: float = 0.02):
        self.token = token
        self.rec = Recorder()
        self.url = self.rec.url
        self._lock = threading.Condition()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 1000
        self._closed = False
        self.events: list[tuple[float, tuple, str]] = []   # (monotonic, key, phase) as phases are reached
        r = self.rec
        # Lowest precedence first (later routes win).
        r.route("*", r"/.*", self._not_found_any)
        r.route("GET", r"/version/?", self._version)
        r.route("GET", r"/api/?", self._api)
        r.route("GET", r"/apis/?", self._apis)
        r.route("GET", r"/apis/apps/v1/?", self._apps_v1)
        r.route("*", r"/apis/apps/v1/namespaces/([^/]+)/([a-z]+)/([^/]+)", self._object)
        r.route("GET", r"/apis/apps/v1/namespaces/([^/]+)/([a-z]+)", self._collection)
        self._thread = threading.Thread(target=self._run_controller, args=(tick,), daemon=True,
                                        name=f"fake-kube-controller-{r.port}")
        self._thread.start()

    # ------------------------------------------------------------------ objects

    def add(self, kind: str, namespace: str, name: str, replicas: int = 3, paused: bool = False,
            script: Controller | None = None, generation: int = 1) -> tuple[str, str, str]:
        """Adds a finished (rolled out) object; returns its key (plural, namespace, name)."""
        plural = PLURALS[kind.lower()]
        with self._lock:
            self._rv += 1
            meta = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": generation,
                    "resourceVersion": str(self._rv), "creationTimestamp": _now_rfc3339(),
                    "labels": {"app": name}, "annotations": {"fake.example/owner": "runner-tests"}}
            template = {"metadata": {"labels": {"app": name}, "annotations": {"prometheus.io/scrape": "true"}},
                        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}
            spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
            if plural != "daemonsets":
                spec["replicas"] = replicas
            if plural == "deployments":
                spec["paused"] = paused
                spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
            if plural == "statefulsets":
                spec["serviceName"] = name
            body = {"apiVersion": "apps/v1", "kind": KINDS[plural], "metadata": meta, "spec": spec, "status": {}}
            o = Obj(plural, namespace, name, body, script or Controller.manual())
            self._set_status(o, "done", observed=generation)
            self._objects[o.key] = o
            self._lock.notify_all()
        return o.key

    def obj(self, key) -> dict:
        with self._lock:
            return copy.deepcopy(self._objects[key].body)

    def phase(self, key) -> str:
        with self._lock:
            return self._objects[key].phase

    def phase_time(self, key, phase: str) -> float | None:
        with self._lock:
            return self._objects[key].phase_at.get(phase)

    def served_phases(self, key) -> list[str]:
        """The phase each successful GET of the object answered with, in order. (A request's
        receipt time cannot tell: the controller may reach a phase between the moment a GET was
        read and the moment it is answered.)"""
        with self._lock:
            return list(self._objects[key].served)

    def step(self, key, phase: str) -> None:
        """Moves the controller of an object to a phase: observed | surge | complete | deadline."""
        with self._lock:
            o = self._objects[key]
            self._set_status(o, phase)
            self._lock.notify_all()

    def fail_next_gets(self, key, statuses: list[int]) -> None:
        """The next GETs of the object are answered with these statuses (Status bodies)."""
        with self._lock:
            self._objects[key].fail_gets.extend(statuses)

    def fail_next_patches(self, key, statuses: list[int]) -> None:
        """The next PATCHes of the object are answered with these statuses (Status bodies), unapplied."""
        with self._lock:
            self._objects[key].fail_patches.extend(statuses)

    # ------------------------------------------------------------------ the controller

    def _set_status(self, o: Obj, phase: str, observed: int | None = None) -> None:
        """Writes the status of a phase (lock held)."""
        b = o.body
        gen = b["metadata"]["generation"]
        spec = b["spec"]
        want = spec.get("replicas", 1) if o.plural != "daemonsets" else 4
        og = observed if (phase == "done" and observed is not None) else gen
        if o.plural == "deployments":
            if phase == "done":
                st = {"observedGeneration": og, "replicas": want, "updatedReplicas": want, "readyReplicas": want,
                      "availableReplicas": want,
                      "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                     _cond("Progressing", "True", "NewReplicaSetAvailable")]}
            elif phase == "observed":
                st = {"observedGeneration": og, "replicas": want + 1, "updatedReplicas": 1, "readyReplicas": want,
                      "availableReplicas": want, "unavailableReplicas": 1,
                      "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                     _cond("Progressing", "True", "ReplicaSetUpdated")]}
            elif phase == "surge":
                # every new pod is there and available, but an old pod is still counted
                st = {"observedGeneration": og, "replicas": want + 1, "updatedReplicas": want,
                      "readyReplicas": want + 1, "availableReplicas": want + 1,
                      "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                     _cond("Progressing", "True", "ReplicaSetUpdated")]}
            elif phase == "complete":
                st = {"observedGeneration": og, "replicas": want, "updatedReplicas": want, "readyReplicas": want,
                      "availableReplicas": want,
                      "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                     _cond("Progressing", "True", "NewReplicaSetAvailable")]}
            elif phase == "deadline":
                st = {"observedGeneration": og, "replicas": want + 1, "updatedReplicas": 1, "readyReplicas": want,
                      "availableReplicas": want, "unavailableReplicas": 1,
                      "conditions": [_cond("Available", "True", "MinimumReplicasAvailable"),
                                     _cond("Progressing", "False", "ProgressDeadlineExceeded",
                                           f'ReplicaSet "{o.name}-7d9f" has timed out progressing.')]}
            else:
                raise ValueError(phase)
        elif o.plural == "statefulsets":
            old, new = f"{o.name}-6c5b", f"{o.name}-7d9f"
            if phase == "done":
                st = {"observedGeneration": og, "replicas": want, "readyReplicas": want, "currentReplicas": want,
                      "updatedReplicas": want, "availableReplicas": want, "currentRevision": old,
                      "updateRevision": old, "collisionCount": 0}
            elif phase in ("observed", "deadline"):
                st = {"observedGeneration": og, "replicas": want, "readyReplicas": want - 1, "currentReplicas": want - 1,
                      "updatedReplicas": 1, "availableReplicas": want - 1, "currentRevision": old,
                      "updateRevision": new, "collisionCount": 0}
            elif phase == "surge":
                # all pods updated and ready, but the controller has not promoted the revision yet
                st = {"observedGeneration": og, "replicas": want, "readyReplicas": want, "currentReplicas": 0,
                      "updatedReplicas": want, "availableReplicas": want, "currentRevision": old,
                      "updateRevision": new, "collisionCount": 0}
            elif phase == "complete":
                st = {"observedGeneration": og, "replicas": want, "readyReplicas": want, "currentReplicas": want,
                      "updatedReplicas": want, "availableReplicas": want, "currentRevision": new,
                      "updateRevision": new, "collisionCount": 0}
            else:
                raise ValueError(phase)
        else:  # daemonsets
            if phase == "done":
                st = {"observedGeneration": og, "desiredNumberScheduled": want, "currentNumberScheduled": want,
                      "updatedNumberScheduled": want, "numberReady": want, "numberAvailable": want,
                      "numberMisscheduled": 0}
            elif phase in ("observed", "deadline"):
                st = {"observedGeneration": og, "desiredNumberScheduled": want, "currentNumberScheduled": want,
                      "updatedNumberScheduled": 1, "numberReady": want - 1, "numberAvailable": want - 1,
                      "numberUnavailable": 1, "numberMisscheduled": 0}
            elif phase == "surge":
                # every node runs the new pod, one not available yet
                st = {"observedGeneration": og, "desiredNumberScheduled": want, "currentNumberScheduled": want,
                      "updatedNumberScheduled": want, "numberReady": want - 1, "numberAvailable": want - 1,
                      "numberUnavailable": 1, "numberMisscheduled": 0}
            elif phase == "complete":
                st = {"observedGeneration": og, "desiredNumberScheduled": want, "currentNumberScheduled": want,
                      "updatedNumberScheduled": want, "numberReady": want, "numberAvailable": want,
                      "numberMisscheduled": 0}
            else:
                raise ValueError(phase)
        b["status"] = st
        self._rv += 1
        b["metadata"]["resourceVersion"] = str(self._rv)
        o.phase = phase
        o.phase_at.setdefault(phase, time.monotonic())
        self.events.append((time.monotonic(), o.key, phase))

    def _advance(self, o: Obj) -> None:
        """Applies the object's script (lock held)."""
        if o.patched_at is None or o.phase in ("complete", "deadline"):
            return
        s = o.script
        el_ms = (time.monotonic() - o.patched_at) * 1000
        if s.mode == "polls":
            if o.polls_since_patch >= max(1, s.k):
                self._set_status(o, "complete")
            elif o.polls_since_patch >= 1 and o.phase == "pending":
                self._set_status(o, "observed")
        elif s.mode == "ms":
            if el_ms >= s.ms:
                self._set_status(o, "complete")
            elif el_ms >= s.ms / 2 and o.phase in ("pending", "observed"):
                self._set_status(o, "surge")
            elif o.phase == "pending":
                self._set_status(o, "observed")
        elif s.mode == "deadline":
            if el_ms >= s.ms:
                self._set_status(o, "deadline")
            elif o.phase == "pending":
                self._set_status(o, "observed")

    def _run_controller(self, tick: float) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                for o in self._objects.values():
                    before = o.body["metadata"]["resourceVersion"]
                    self._advance(o)
                    if o.body["metadata"]["resourceVersion"] != before:
                        self._lock.notify_all()
            time.sleep(tick)

    # ------------------------------------------------------------------ HTTP handlers

    def _auth(self, req: Req):
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, _status(401, "Unauthorized", "Unauthorized")
        return None

    def _not_found_any(self, req: Req):
        return self._auth(req) or (404, {}, _status(404, "NotFound", "the server could not find the requested resource"))

    def _version(self, req: Req):
        return self._auth(req) or {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake",
                                   "gitCommit": "0" * 40, "gitTreeState": "clean",
                                   "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.0",
                                   "compiler": "gc", "platform": "linux/amd64"}

    def _api(self, req: Req):
        return self._auth(req) or {"kind": "APIVersions", "versions": ["v1"],
                                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                   "serverAddress": self.url.split("//")[1]}]}

    def _apis(self, req: Req):
        gv = {"groupVersion": "apps/v1", "version": "v1"}
        return self._auth(req) or {"kind": "APIGroupList", "apiVersion": "v1",
                                   "groups": [{"name": "apps", "versions": [gv], "preferredVersion": gv}]}

    def _apps_v1(self, req: Req):
        res = []
        for plural, kind in KINDS.items():
            res.append({"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        return self._auth(req) or {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
                                   "resources": res}

    def _object(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        ns, plural, name = req.match.group(1), req.match.group(2), req.match.group(3)
        if plural not in KINDS:
            return 404, {}, _status(404, "NotFound", "the server could not find the requested resource")
        key = (plural, ns, name)
        if req.method == "GET":
            with self._lock:
                o = self._objects.get(key)
                if o is None:
                    return 404, {}, status_404(plural, name)
                if o.fail_gets:
                    return _injected(o.fail_gets.pop(0), plural, name)
                if o.patched_at is not None:
                    o.polls_since_patch += 1
                self._advance(o)
                o.served.append(o.phase)
                self._lock.notify_all()
                return 200, {}, self._public(o)
        if req.method == "PATCH":
            ct = req.content_type.split(";")[0].strip().lower()
            if ct != STRATEGIC:
                return 415, {}, _status(415, "UnsupportedMediaType",
                                        f"the body of the request was in an unknown format - accepted media types "
                                        f"include: application/json-patch+json, application/merge-patch+json, "
                                        f"application/apply-patch+yaml, {STRATEGIC}")
            if not isinstance(req.json, dict):
                return 400, {}, _status(400, "BadRequest", "the patch is not a JSON object")
            with self._lock:
                o = self._objects.get(key)
                if o is None:
                    return 404, {}, status_404(plural, name)
                if o.fail_patches:
                    return _injected(o.fail_patches.pop(0), plural, name)
                before = json.dumps(o.body["spec"], sort_keys=True)
                patch = {k: v for k, v in req.json.items() if k in ("spec", "metadata")}
                _merge(o.body, patch)
                if json.dumps(o.body["spec"], sort_keys=True) != before:
                    o.body["metadata"]["generation"] += 1
                self._rv += 1
                o.body["metadata"]["resourceVersion"] = str(self._rv)
                mf = req.query.get("fieldManager")
                if mf:
                    o.body["metadata"].setdefault("managedFields", []).append(
                        {"manager": mf, "operation": "Update", "apiVersion": "apps/v1", "time": _now_rfc3339(),
                         "fieldsType": "FieldsV1"})
                o.patched_at = time.monotonic()
                o.polls_since_patch = 0
                if o.script.mode != "never":
                    o.phase = "pending"
                o.phase_at = {}
                self._lock.notify_all()
                return 200, {}, self._public(o)
        return 405, {}, _status(405, "MethodNotAllowed", f"{req.method} is not supported by the fake")

    def _public(self, o: Obj) -> dict:
        return copy.deepcopy(o.body)

    def _collection(self, req: Req):
        denied = self._auth(req)
        if denied:
            return denied
        ns, plural = req.match.group(1), req.match.group(2)
        if plural not in KINDS:
            return 404, {}, _status(404, "NotFound", "the server could not find the requested resource")
        sel = req.query.get("fieldSelector", "")
        want_name = None
        for part in sel.split(","):
            if part.startswith("metadata.name="):
                want_name = part.split("=", 1)[1]

        def items():
            return [self._public(o) for k, o in self._objects.items()
                    if k[0] == plural and k[1] == ns and (want_name is None or k[2] == want_name)]

        if req.query.get("watch") in ("1", "true", "True"):
            timeout = min(float(req.query.get("timeoutSeconds", "30") or 30), 30.0)

            def stream():
                seen: dict[str, str] = {}
                end = time.monotonic() + timeout
                while True:
                    with self._lock:
                        if self._closed:
                            return
                        cur = items()
                        out = []
                        for it in cur:
                            n, rv = it["metadata"]["name"], it["metadata"]["resourceVersion"]
                            if seen.get(n) != rv:
                                out.append({"type": "ADDED" if n not in seen else "MODIFIED", "object": it})
                                seen[n] = rv
                        if not out:
                            left = end - time.monotonic()
                            if left <= 0:
                                return
                            self._lock.wait(timeout=min(left, 0.5))
                    for ev in out:
                        yield json.dumps(ev) + "\n"

            return 200, {"Content-Type": "application/json"}, stream()
        with self._lock:
            its = items()
            rv = str(self._rv)
        return {"kind": KINDS[plural] + "List", "apiVersion": "apps/v1", "metadata": {"resourceVersion": rv},
                "items": its}

    # ------------------------------------------------------------------ queries

    @staticmethod
    def path_of(key) -> str:
        plural, ns, name = key
        return f"/apis/apps/v1/namespaces/{ns}/{plural}/{name}"

    def requests_for(self, key, method: str | None = None) -> list[Req]:
        p = self.path_of(key)
        return [r for r in self.rec.snapshot() if r.path == p and (method is None or r.method == method)]

    def patches(self, key) -> list[Req]:
        return self.requests_for(key, "PATCH")

    def all_patches(self) -> list[Req]:
        return [r for r in self.rec.snapshot() if r.method == "PATCH"]

    def unauthenticated(self) -> list[Req]:
        return [r for r in self.rec.snapshot() if r.headers.get("authorization") != f"Bearer {self.token}"]

    def describe(self, last: int = 40) -> str:
        return self.rec.describe(last)

    # ------------------------------------------------------------------ kubeconfig, lifecycle

    def kubeconfig(self, namespace: str = "default") -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "runner-tests", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "runner-tests",
                                                      "namespace": namespace}}],
            "current-context": "fake",
            "preferences": {},
        }

    def write_kubeconfig(self, path) -> str:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        p.chmod(0o600)
        return str(p)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self.rec.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _injected(code: int, plural: str, name: str):
    reason = {403: "Forbidden", 409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
              503: "ServiceUnavailable"}.get(code, "InternalError" if code >= 500 else "BadRequest")
    msg = (f'{plural}.apps "{name}" is forbidden: User "system:serviceaccount:ops:gateway" cannot patch '
           f'resource "{plural}" in API group "apps"') if code == 403 else f"injected {code}"
    return code, {}, _status(code, reason, msg, {"name": name, "group": "apps", "kind": plural})


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict:
    now = _now_rfc3339()
    return {"type": type_, "status": status, "reason": reason, "message": message or reason,
            "lastUpdateTime": now, "lastTransitionTime": now}
