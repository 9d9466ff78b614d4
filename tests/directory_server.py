"""A real user-directory HTTP server on 127.0.0.1 for tests, reconfigurable while it runs.

    with DirectoryServer({"u1": {"email": "ada@example.com"}}) as server:
        client = DirectoryClient(server.url_template)
        server.fail(503, times=1)           # next request answers 503, then normal again
        server.slow(1.0, user_id="u1")      # every request for u1 sleeps 1 s first
        server.hits("u1")                   # requests received for /users/u1

Routes: GET /users/<id> answers the JSON record in `server.records` (mutable at any time) or
404. A behaviour set for one user wins over the global one; `times=N` limits a behaviour to
the next N requests it matches, after which the server answers normally again.

Authentication, when asked for: `server.required_headers` (e.g. {"X-API-Key": "k1"}) must be
sent exactly, else 401. With a `TokenIssuer`, the server also serves POST /oauth/token (the
OAuth 2.0 client-credentials grant) and GET /users/<id> needs a bearer token it issued and
that has not expired or been revoked:

    issuer = TokenIssuer(expires_in=1)
    with DirectoryServer(records, issuer=issuer) as server:
        server.token_url                    # http://127.0.0.1:PORT/oauth/token
        issuer.revoke_all()                 # every token issued so far is refused (401)
        server.slow(1.0, TOKEN_ENDPOINT)    # behaviours apply to the token endpoint this way
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, quote, unquote

from requests.structures import CaseInsensitiveDict

USERS_PREFIX = "/users/"
TOKEN_PATH = "/oauth/token"
TOKEN_ENDPOINT = "\0token-endpoint"  # behaviour key: requests to the token endpoint


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


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint: how the client authenticated and what it asked."""

    client_id: str | None
    auth_method: str | None  # client_secret_basic | client_secret_post | None
    form: dict[str, str]  # the form, client_secret removed


class TokenIssuer:
    """The client-credentials grant of an authorization server, with expiring opaque tokens.

    Shared by the servers that issue (POST /oauth/token) and accept (GET /users/<id>) them."""

    def __init__(self, client_id: str = "nudge", client_secret: str = "first-secret",
                 *, expires_in: float = 300) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() it expires
        self._lock = threading.Lock()

    @property
    def issued(self) -> int:
        """Tokens issued so far."""
        with self._lock:
            return len(self._tokens)

    def valid(self, token: str) -> bool:
        with self._lock:
            return self._tokens.get(token, 0) > time.monotonic()

    def revoke_all(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0

    def issue(self, form: dict[str, str], authorization: str) -> tuple[int, dict]:
        """(status, JSON body) answering one token request (RFC 6749 sections 4.4 and 5)."""
        client_id, secret, method = form.get("client_id"), form.get("client_secret"), None
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic":
            decoded = base64.b64decode(credentials).decode()
            client_id, _, secret = (unquote(part) for part in decoded.partition(":"))
            method = "client_secret_basic"
        elif secret is not None:
            method = "client_secret_post"
        visible = {k: v for k, v in form.items() if k != "client_secret"}
        with self._lock:
            self.requests.append(TokenRequest(client_id, method, visible))
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if client_id != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.expires_in
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}


class DirectoryServer:
    """Context manager running the directory on an ephemeral port in a daemon thread."""

    def __init__(self, records: dict[str, dict] | None = None, *,
                 issuer: TokenIssuer | None = None) -> None:
        self.records: dict[str, dict] = dict(records or {})
        self.issuer = issuer
        self.required_headers: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        self._behaviours: dict[str | None, Behaviour] = {}  # key None: every user
        self._refused = 0
        self._connections: set[socket.socket] = set()
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

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def start(self) -> DirectoryServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, and hang up on kept-alive connections: the server is really gone."""
        self._closing.set()  # wakes handlers sleeping in a `slow` behaviour
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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

    def cache_control(self, value: str, user_id: str | None = None, *,
                      times: int | None = None) -> None:
        """Serve the record (or 404) as usual, with this Cache-Control header."""
        self.behave(Behaviour(headers={"Cache-Control": value}, times=times), user_id)

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

    def refused(self) -> int:
        """Directory requests answered 401."""
        with self._lock:
            return self._refused

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    # --- used by the handler ----------------------------------------------------------------

    def _record_and_choose(self, request: RecordedRequest) -> Behaviour | None:
        with self._lock:
            self.requests.append(request)
            if request.path == TOKEN_PATH:
                key: str | None = TOKEN_ENDPOINT
            else:
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

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            super().finish()

        def do_GET(self) -> None:
            user_id = _user_id_of(self.path)
            headers = CaseInsensitiveDict(dict(self.headers.items()))
            recorded = RecordedRequest(self.command, self.path, user_id, headers)
            behaviour = server._record_and_choose(recorded)
            if self._misbehave(behaviour):
                return
            if not self._authorized(headers):
                with server._lock:
                    server._refused += 1
                challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                self._send(401, b'{"error": "invalid or expired credentials"}', challenge)
                return
            extra = behaviour.headers if behaviour is not None else {}
            record = server.records.get(user_id) if user_id is not None else None
            if record is None:
                self._send(404, b'{"error": "no such user"}', extra)
            else:
                self._send(200, json.dumps(record).encode(), extra)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            headers = CaseInsensitiveDict(dict(self.headers.items()))
            recorded = RecordedRequest(self.command, self.path, None, headers)
            behaviour = server._record_and_choose(recorded)
            if self._misbehave(behaviour):
                return
            if self.path != TOKEN_PATH or server.issuer is None:
                self._send(404, b'{"error": "not found"}', {})
                return
            status, answer = server.issuer.issue(form, headers.get("Authorization", ""))
            self._send(status, json.dumps(answer).encode(), {"Cache-Control": "no-store"})

        def _authorized(self, headers: CaseInsensitiveDict) -> bool:
            if any(headers.get(name) != value for name, value in server.required_headers.items()):
                return False
            if server.issuer is None:
                return True
            scheme, _, token = headers.get("Authorization", "").partition(" ")
            return scheme.lower() == "bearer" and server.issuer.valid(token.strip())

        def _misbehave(self, behaviour: Behaviour | None) -> bool:
            """Carry out a behaviour that replaces the normal answer; True when it did."""
            if behaviour is None:
                return False
            if behaviour.delay and server._closing.wait(behaviour.delay):
                self.close_connection = True
                return True
            if behaviour.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return True
            if behaviour.status is not None:
                error = {"error": f"simulated {behaviour.status}"}
                self._send(behaviour.status, json.dumps(error).encode(), behaviour.headers)
                return True
            if behaviour.body is not None:
                self._send(200, behaviour.body, {}, behaviour.content_type)
                return True
            return False

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
