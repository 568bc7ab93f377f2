"""Browser sessions: one working directory per session, one event at a time on it, Stop, and the session's end.

Also `public_text`: what a visitor may read of a message (no server paths).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Activity:
    """What a session's current event is doing, for Stop: which button, and how far a per-class run got."""

    what: str  # the button, e.g. "Generate"
    classes: bool = False  # a per-class run (stops between classes); else one step that ends by itself
    done: int = 0  # classes finished (kept on disk)
    total: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def stopped_message(self) -> str:
        if self.done == 0:
            return f"Stopped {self.what} before its first class; run again to start it."
        return (f"Stopped {self.what} after class {self.done} of {self.total}; finished classes are kept; run again "
                "to resume.")


class SessionBusy(ValueError):
    """Another event of the same session holds its files."""


class Sessions:
    """Per-session working directories under one root; sessions idle longer than `ttl_hours` are deleted.

    The directory name is a hash of Gradio's session id, so nothing a visitor sends becomes a path. One event at a
    time works on a session's files (`working`); Stop and the session's end set the session's stop flag, which a
    per-class run checks between classes, and a session that ends while an event works on it is deleted when that
    event ends, never under it.
    """

    def __init__(self, root: str | Path, ttl_hours: float = 6.0):
        self.root = Path(root)
        self.ttl_seconds = ttl_hours * 3600
        self._locks: dict[Path, threading.Lock] = {}
        self._stops: dict[Path, threading.Event] = {}
        self._activity: dict[Path, Activity] = {}
        self._closing: set[Path] = set()
        self._guard = threading.Lock()

    def lock(self, session_hash: str | None) -> threading.Lock:
        """The session's lock: events of one session that write its files hold it, so they never interleave."""
        with self._guard:
            return self._locks.setdefault(self.path(session_hash), threading.Lock())

    def stop_flag(self, session_hash: str | None) -> threading.Event:
        """Set by Stop and by the session's end; cleared when the session's next event starts."""
        with self._guard:
            return self._stops.setdefault(self.path(session_hash), threading.Event())

    @contextmanager
    def working(self, session_hash: str | None, what: str, classes: bool = False) -> Iterator[Activity]:
        """Holds the session's files for one event (refused at once when another event holds them).

        Raises:
            SessionBusy: another event of this session is running.
        """
        path, lock = self.path(session_hash), self.lock(session_hash)
        if not lock.acquire(blocking=False):
            raise SessionBusy("This session is busy with another run or upload; wait for it to finish (or press "
                              "Stop), then try again.")
        activity = Activity(what, classes)
        with self._guard:
            self._stops.setdefault(path, threading.Event()).clear()
            self._activity[path] = activity
        try:
            yield activity
        finally:
            with self._guard:
                self._activity.pop(path, None)
                closing = path in self._closing
                lock.release()
            activity.ended.set()
            if closing:
                self._remove(path)

    def stop(self, session_hash: str | None, wait: float = 0.0) -> str:
        """Sets the session's stop flag and says what it stopped; waits up to `wait` seconds for a per-class run to
        reach the end of its current class."""
        path = self.path(session_hash)
        self.stop_flag(session_hash).set()
        with self._guard:
            activity = self._activity.get(path)
        if activity is None:
            return "Nothing was running."
        if not activity.classes:
            return f"{activity.what} runs as one step and ends by itself; nothing else was running."
        activity.ended.wait(wait)
        if not activity.ended.is_set():
            where = f"class {activity.done + 1} of {activity.total}" if activity.total else "its first class"
            return (f"Stopping {activity.what} after the class it is on ({where}); finished classes are kept; run "
                    "again to resume.")
        if activity.total and activity.done >= activity.total:  # it ended on its own before reaching the flag
            return f"Nothing was stopped: {activity.what} had finished all {activity.total} classes."
        return activity.stopped_message()

    def path(self, session_hash: str | None) -> Path:
        if not session_hash:
            raise ValueError("this request carries no session id; use the web page or gradio_client")
        return self.root / hashlib.sha256(session_hash.encode()).hexdigest()[:24]

    def run_dir(self, session_hash: str | None) -> Path:
        """The session's run directory (created, and the session marked active)."""
        session = self.path(session_hash)
        (session / "run").mkdir(parents=True, exist_ok=True)
        os.utime(session)
        self.prune(keep=session)
        return session / "run"

    def upload_dir(self, session_hash: str | None) -> Path:
        return self.path(session_hash) / "uploads"

    def close(self, session_hash: str | None) -> None:
        """The session ended: its run stops after the current class, and its directory goes now, or, while an event
        works on it, as soon as that event ends."""
        if not session_hash:
            return
        path = self.path(session_hash)
        self.stop_flag(session_hash).set()
        lock = self.lock(session_hash)
        with self._guard:
            if not lock.acquire(blocking=False):
                self._closing.add(path)  # `working` removes it when its event ends
                return
        try:
            self._remove(path)
        finally:
            with self._guard:
                lock.release()
                if self._locks.get(path) is lock:
                    del self._locks[path]

    def _remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        with self._guard:
            self._closing.discard(path)
            self._stops.pop(path, None)
            lock = self._locks.get(path)
            if lock is not None and not lock.locked():
                del self._locks[path]

    def prune(self, keep: Path | None = None) -> None:
        """Deletes sessions idle past the TTL (never one an event is working on)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - self.ttl_seconds
        for session in self.root.iterdir():
            if session != keep and session.is_dir() and session.stat().st_mtime < cutoff:
                with self._guard:
                    busy = session in self._activity
                if not busy:
                    shutil.rmtree(session, ignore_errors=True)


# Any absolute path of two parts or more (a lone "/etc" is a visitor's own input, echoed back as typed).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`()\[\]<>,;]+/)+([^\s/'\"`()\[\]<>,;]*)")


def public_text(text: str, private_roots: list[str | Path]) -> str:
    """`text` without the server's absolute paths, for a visitor: a path under one of `private_roots` (the sessions
    root, Gradio's upload cache) loses the root and the session's hashed folder (`uploads/shapes`, `run/work/...`);
    any other absolute path is cut to `…/<last part>`."""
    for root in sorted((str(r).rstrip("/") for r in private_roots), key=len, reverse=True):
        text = re.sub(re.escape(root) + r"/(?:[0-9a-f]{24}/)?", "", text)
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), text)

