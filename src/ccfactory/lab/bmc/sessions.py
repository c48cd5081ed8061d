"""Redfish sessions (``POST /redfish/v1/SessionService/Sessions`` -> ``X-Auth-Token``).

Sessions live in the emulator's memory only: like a real BMC, restarting it logs
everyone out. Tokens are random (``secrets``) and never logged.

Example::

    >>> store = SessionStore()
    >>> sid, token = store.create("root")
    >>> store.validate(token).username
    'root'
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

SESSION_TIMEOUT = 1800  # seconds of inactivity (SessionService.SessionTimeout)
MAX_SESSIONS = 64  # oldest sessions are dropped beyond this, as BMCs cap them


@dataclass
class Session:
    id: str
    username: str
    token: str
    created: float
    last_used: float


class SessionStore:
    """Thread-safe in-memory session table of one BMC."""

    def __init__(self, timeout: float = SESSION_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._next = 1

    def create(self, username: str) -> tuple[str, str]:
        """Open a session; returns ``(session_id, token)``."""
        with self._lock:
            self._expire()
            while len(self._by_id) >= MAX_SESSIONS:
                oldest = min(self._by_id.values(), key=lambda s: s.last_used)
                del self._by_id[oldest.id]
            sid = str(self._next)
            self._next += 1
            now = time.time()
            session = Session(sid, username, secrets.token_urlsafe(32), now, now)
            self._by_id[sid] = session
            return sid, session.token

    def validate(self, token: str) -> Session | None:
        """The live session of a token (refreshing its idle timer), or None."""
        with self._lock:
            self._expire()
            for session in self._by_id.values():
                if secrets.compare_digest(session.token, token):
                    session.last_used = time.time()
                    return session
            return None

    def get(self, sid: str) -> Session | None:
        with self._lock:
            self._expire()
            return self._by_id.get(sid)

    def delete(self, sid: str) -> bool:
        with self._lock:
            return self._by_id.pop(sid, None) is not None

    def ids(self) -> list[str]:
        with self._lock:
            self._expire()
            return sorted(self._by_id, key=int)

    def _expire(self) -> None:
        cutoff = time.time() - self.timeout
        for sid in [s.id for s in self._by_id.values() if s.last_used < cutoff]:
            del self._by_id[sid]
