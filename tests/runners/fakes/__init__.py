"""Wire-format fakes of the runner backends (loopback HTTP servers built on fakes.recorder.Recorder).

`Scripted` is the small state machine the AWX, Jenkins and GitHub fakes share: a remote run that shows
its non-terminal states one poll at a time and then its terminal state, after a scripted number of
polls, or stays non-terminal while held until a test calls `finish`.
"""

from __future__ import annotations

import threading
from collections import deque


class Scripted:
    """`states`: the non-terminal states shown on successive polls (the last one repeats);
    `terminal`: the final state, reached on poll number `polls` + 1 (so `polls` polls see a
    non-terminal state) unless `hold` is set; `finish(state)` ends it now."""

    def __init__(self, states: list, terminal, polls: int = 2, hold: bool = False):
        self.states = list(states)
        self.terminal = terminal
        self.polls_to_finish = polls
        self.hold = hold
        self.polls = 0
        self.forced = None
        self._lock = threading.Lock()
        self.seen_running = threading.Event()

    def poll(self):
        """Advances by one poll and returns the state now shown."""
        with self._lock:
            self.polls += 1
            return self._current(advance=True)

    def peek(self):
        with self._lock:
            return self._current(advance=False)

    def _current(self, advance: bool):
        if self.forced is not None:
            return self.forced
        n = self.polls
        if not self.hold and n > self.polls_to_finish:
            return self.terminal
        if not self.states:
            return self.terminal
        st = self.states[min(max(n - 1, 0), len(self.states) - 1)]
        if advance and st == self.states[-1]:
            self.seen_running.set()
        return st

    def finish(self, state=None):
        with self._lock:
            self.forced = self.terminal if state is None else state
            self.hold = False

    @property
    def done(self) -> bool:
        with self._lock:
            return self.forced is not None or (not self.hold and self.polls > self.polls_to_finish)


class Responses:
    """A queue of canned answers `(status, headers, body)` consumed one per request, then `always`
    (if set) for every later request, else None (meaning: behave normally)."""

    def __init__(self):
        self._q: deque = deque()
        self.always = None
        self._lock = threading.Lock()

    def push(self, *answers):
        with self._lock:
            self._q.extend(answers)

    def set_always(self, answer):
        with self._lock:
            self.always = answer

    def next(self):
        with self._lock:
            if self._q:
                return self._q.popleft()
            return self.always
