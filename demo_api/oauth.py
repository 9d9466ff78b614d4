"""The demo product's OAuth 2.0 authorization server: the client-credentials grant.

`POST /oauth/token` issues short-lived opaque bearer tokens to one confidential client
(Authlib's `AuthorizationServer` does the protocol: client authentication by HTTP Basic or
form fields, error responses); `GET /users/<id>` accepts them until they expire or are
revoked (`POST /admin/oauth/revoke`). The client secret may live in a file that is read at
every token request, so rotating it needs no restart of the demo either.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask

SCOPES = ("users:read",)
AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)


@dataclass(frozen=True)
class OAuthSettings:
    """The one client allowed to ask for tokens, and how long its tokens live."""

    client_id: str
    client_secret: str | None = None
    client_secret_file: Path | None = None
    token_ttl: int = 300

    def __post_init__(self) -> None:
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError("give the client secret or the file holding it, not both")
        if self.token_ttl < 1:
            raise ValueError("token_ttl must be >= 1 second")

    def current_secret(self) -> str:
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text(encoding="utf-8").strip()
        assert self.client_secret is not None
        return self.client_secret


class DemoClient(ClientMixin):
    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings

    def get_client_id(self) -> str:
        return self.settings.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        try:
            expected = self.settings.current_secret()
        except OSError:
            return False
        return bool(expected) and hmac.compare_digest(client_secret.encode(), expected.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass
class IssuedToken(TokenMixin):
    access_token: str
    client_id: str
    scope: str
    issued_at: float
    expires_in: int
    clock: Callable[[], float]
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return self.clock() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked


class TokenStore:
    """Issued tokens, in memory; expired ones are forgotten as new ones are issued."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self.issued = 0

    def save(self, token: dict, request: object) -> None:
        client = request.client  # type: ignore[attr-defined]
        issued = IssuedToken(token["access_token"], client.get_client_id(),
                             token.get("scope", ""), self.clock(), int(token["expires_in"]),
                             self.clock)
        with self._lock:
            for value in [v for v, t in self._tokens.items() if t.is_expired()]:
                del self._tokens[value]
            self._tokens[issued.access_token] = issued
            self.issued += 1

    def find(self, access_token: str) -> IssuedToken | None:
        with self._lock:
            return self._tokens.get(access_token)

    def revoke_all(self) -> int:
        """Revoke every token issued so far; returns how many were still valid."""
        with self._lock:
            live = [t for t in self._tokens.values() if not (t.revoked or t.is_expired())]
            for token in self._tokens.values():
                token.revoked = True
            return len(live)


class _Validator(BearerTokenValidator):
    def __init__(self, store: TokenStore) -> None:
        super().__init__()
        self.store = store

    def authenticate_token(self, token_string: str) -> IssuedToken | None:
        return self.store.find(token_string)


@dataclass
class DemoOAuth:
    """The authorization server and resource protector of one demo app."""

    settings: OAuthSettings
    tokens: TokenStore
    server: AuthorizationServer
    protector: ResourceProtector


def install_oauth(app: Flask, settings: OAuthSettings, clock: Callable[[], float]) -> DemoOAuth:
    """Set up the token endpoint's machinery on `app`; the routes are the app's."""
    client = DemoClient(settings)
    tokens = TokenStore(clock)
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": settings.token_ttl}
    server = AuthorizationServer(
        app,
        query_client=lambda client_id: client if client_id == settings.client_id else None,
        save_token=tokens.save,
    )
    server.register_grant(ClientCredentialsGrant)
    protector = ResourceProtector()
    protector.register_token_validator(_Validator(tokens))
    return DemoOAuth(settings, tokens, server, protector)
