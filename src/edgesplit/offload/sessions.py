"""The edge server's memory between requests: round-1 sessions and the answers it already gave.

Owns who may use what (issue 19). A session id is made by the server (128 random bits) when it
answers a round 1 and is bound to that request's id: round 2 must come with both, so knowing
another device's session id is not enough to merge patches into it, and a round 1 cannot name a
session at all. An answer is remembered under (request id, round) with the SHA-256 of the body
it answered: a retry of the same body gets the same answer, another body under the same id is
refused. Plain data; not thread-safe (the server calls it under its lock). No HTTP, no torch.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Session", "SessionConflictError", "SessionStore", "body_digest"]

ResultT = TypeVar("ResultT")
AnswerT = TypeVar("AnswerT")


class SessionConflictError(Exception):
    """A request that collides with another's id or session; `code` is the error's name."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def body_digest(body: bytes) -> bytes:
    """What a request id is bound to: the SHA-256 of the request body as received."""
    return hashlib.sha256(body).digest()


@dataclass(frozen=True, slots=True)
class Session(Generic[ResultT]):
    result: ResultT
    request_id: str
    expires_s: float
    round_index: int


class SessionStore(Generic[ResultT, AnswerT]):
    """Round-1 results kept for round 2, and remembered answers, both bounded and expiring."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_sessions: int,
        max_answers: int,
        clock: Callable[[], float],
    ) -> None:
        self._ttl_s, self._max_sessions, self._max_answers = ttl_s, max_sessions, max_answers
        self._clock = clock
        self._sessions: OrderedDict[str, Session[ResultT]] = OrderedDict()
        self._answers: OrderedDict[tuple[str, int], tuple[bytes, AnswerT]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def remembered(self, request_id: str, round_index: int, digest: bytes) -> AnswerT | None:
        """The answer already given to this request, or None if there is none.

        Raises:
            SessionConflictError: the id answered another body ("request_id_reused").
        """
        entry = self._answers.get((request_id, round_index))
        if entry is None:
            return None
        if entry[0] != digest:
            raise SessionConflictError(
                "request_id_reused",
                f"request id {request_id!r} (round {round_index}) already answered a different "
                "body; a retry must resend the same bytes, a new image needs a new request id",
            )
        return entry[1]

    def remember(self, request_id: str, round_index: int, digest: bytes, answer: AnswerT) -> None:
        self._answers[(request_id, round_index)] = (digest, answer)
        while len(self._answers) > self._max_answers:
            self._answers.popitem(last=False)

    def check_round1(self, session_id: str | None) -> None:
        """Raises SessionConflictError if a round 1 names a session: only the server makes them."""
        if session_id is not None:
            raise SessionConflictError(
                "session_assigned_by_server",
                "a round 1 must not carry a session_id; the server assigns one in its answer",
            )

    def for_round2(self, session_id: str, request_id: str) -> Session[ResultT]:
        """The round-1 session a round 2 continues.

        Raises:
            SessionConflictError: unknown or expired ("unknown_session"), made for another request
                ("session_mismatch"), or already continued ("round_done").
        """
        self.expire()
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionConflictError(
                "unknown_session",
                f"session {session_id!r} is unknown (expired or server restarted); resend all "
                "patches as a new round 1",
            )
        if not secrets.compare_digest(session.request_id, request_id):
            raise SessionConflictError(
                "session_mismatch",
                "this session belongs to another request id; round 2 must repeat round 1's",
            )
        if session.round_index != 1:
            raise SessionConflictError("round_done", "this session already had its round 2")
        return session

    def open(self, request_id: str, result: ResultT, *, keep: bool) -> str:
        """A new server-made session id; with `keep`, the round-1 result is held for round 2.

        A round 1 that asks for no round 2 (extra_k 0) is not kept: a session holds the
        encoder state of every received patch (~250 KiB for 64 patches of the bundled model).
        """
        session_id = secrets.token_hex(16)
        if keep:
            self._sessions[session_id] = Session(result, request_id, self._deadline(), 1)
            self.expire()
        return session_id

    def close(self, session_id: str, result: ResultT) -> None:
        """Mark a session's round 2 done (a second round 2 is refused until it expires)."""
        session = self._sessions.pop(session_id)
        self._sessions[session_id] = Session(result, session.request_id, self._deadline(), 2)
        self.expire()

    def expire(self) -> None:
        """Drop expired sessions and, oldest first, any beyond max_sessions."""
        now = self._clock()
        while self._sessions:
            session = next(iter(self._sessions.values()))
            if session.expires_s > now and len(self._sessions) <= self._max_sessions:
                break
            self._sessions.popitem(last=False)

    def _deadline(self) -> float:
        return self._clock() + self._ttl_s
