"""A real user-directory HTTP server on 127.0.0.1 for tests, reconfigurable while it runs.

    with DirectoryServer({"u1": {"email": "ada@example.com"}}) as server:
        client = DirectoryClient(server.url_template)
        server.fail(503, times=1)           # next request answers 503, then normal again
        server.slow(1.0, user_id="u1")      # every request for u1 sleeps 1 s first
        server.hits("u1")                   # requests received for /users/u1

Routes: GET /users/<id> answers the JSON record in `server.records` (mutable at any time) or
404. A behaviour set for one user wins over the global one; `times=N` limits a behaviour to
the next N requests it matches, after which the server answers normally again.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import quote, unquote

from requests.structures import CaseInsensitiveDict

USERS_PREFIX = "/users/"


@dataclass
class Behaviour:
    """How to answer a matching request instead of (or before) serving the record."""

    delay: float = 0.0  # seconds to sleep before answering
    status: int | None = None  # answer this status with a small JSON error body
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # answer 200 with exactly these bytes
    content_type: str = "application/json"
    drop: bool = False  # close the connection without answering
    times: int | None = None  # None: until reset; N: only the next N matching requests


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (raw path, before any decoding)."""

    method: str
    path: str
    user_id: str | None  # decoded id when the path is exactly /users/<one segment>
    headers: CaseInsensitiveDict


class DirectoryServer:
    """Context manager running the directory on an ephemeral port in a daemon thread."""

    def __init__(self, records: dict[str, dict] | None = None) -> None:
        self.records: dict[str, dict] = dict(records or {})
        self.requests: list[RecordedRequest] = []
        self._behaviours: dict[str | None, Behaviour] = {}  # key None: every user
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.handle_error = _ignore_client_errors  # type: ignore[method-assign]
        # A short poll interval keeps close() (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url_template(self) -> str:
        return f"{self.url}{USERS_PREFIX}{{user_id}}"

    def start(self) -> DirectoryServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # wakes handlers sleeping in a `slow` behaviour
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DirectoryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- configuring behaviours -------------------------------------------------------------

    def behave(self, behaviour: Behaviour, user_id: str | None = None) -> None:
        """Apply `behaviour` to requests for `user_id`, or to every request when None."""
        with self._lock:
            self._behaviours[user_id] = behaviour

    def slow(self, seconds: float, user_id: str | None = None, *, times: int | None = None) -> None:
        self.behave(Behaviour(delay=seconds, times=times), user_id)

    def fail(
        self,
        status: int = 500,
        user_id: str | None = None,
        *,
        times: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer `status` (e.g. 500, 503, 429 with `retry_after="0"`, 404)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.behave(Behaviour(status=status, headers=headers, times=times), user_id)

    def answer_raw(
        self,
        body: bytes | str,
        user_id: str | None = None,
        *,
        times: int | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer 200 with this exact body: invalid JSON, a JSON list, anything."""
        raw = body.encode() if isinstance(body, str) else body
        self.behave(Behaviour(body=raw, content_type=content_type, times=times), user_id)

    def drop_connection(self, user_id: str | None = None, *, times: int | None = None) -> None:
        self.behave(Behaviour(drop=True, times=times), user_id)

    def reset(self) -> None:
        """Forget every behaviour and recorded request (records stay)."""
        with self._lock:
            self._behaviours.clear()
            self.requests.clear()

    # --- inspecting what arrived ------------------------------------------------------------

    def path_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(r.path for r in self.requests)

    def hits(self, user_id: str) -> int:
        """Requests received for /users/<user_id> (the id as the client should encode it)."""
        return self.path_counts()[USERS_PREFIX + quote(user_id, safe="")]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    # --- used by the handler ----------------------------------------------------------------

    def _record_and_choose(self, request: RecordedRequest) -> Behaviour | None:
        with self._lock:
            self.requests.append(request)
            key = request.user_id if request.user_id in self._behaviours else None
            behaviour = self._behaviours.get(key)
            if behaviour is not None and behaviour.times is not None:
                behaviour.times -= 1
                if behaviour.times <= 0:
                    del self._behaviours[key]
            return behaviour


def _user_id_of(path: str) -> str | None:
    if not path.startswith(USERS_PREFIX) or "?" in path:
        return None
    segment = path[len(USERS_PREFIX):]
    if not segment or "/" in segment:
        return None
    return unquote(segment)


def _ignore_client_errors(request: object, client_address: object) -> None:
    """Clients that time out and hang up are expected here; don't print tracebacks."""


def _make_handler(server: DirectoryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real API behind a load balancer
        disable_nagle_algorithm = True  # headers and body go out separately: avoid 40 ms stalls

        def do_GET(self) -> None:
            user_id = _user_id_of(self.path)
            headers = CaseInsensitiveDict(dict(self.headers.items()))
            recorded = RecordedRequest(self.command, self.path, user_id, headers)
            behaviour = server._record_and_choose(recorded)
            if behaviour is not None:
                if behaviour.delay and server._closing.wait(behaviour.delay):
                    self.close_connection = True
                    return
                if behaviour.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if behaviour.status is not None:
                    error = {"error": f"simulated {behaviour.status}"}
                    self._send(behaviour.status, json.dumps(error).encode(), behaviour.headers)
                    return
                if behaviour.body is not None:
                    self._send(200, behaviour.body, {}, behaviour.content_type)
                    return
            record = server.records.get(user_id) if user_id is not None else None
            if record is None:
                self._send(404, b'{"error": "no such user"}', {})
            else:
                self._send(200, json.dumps(record).encode(), {})

        def _send(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str],
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
