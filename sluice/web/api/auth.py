"""`/api/auth/*`: login, logout, the signed-in user; and how a request proves who it is
(a session cookie via flask-login, or an API key in `Authorization: Bearer`)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask_login import UserMixin, current_user, login_required, login_user, logout_user

from ...errors import Forbidden, Invalid, NotFound, Unauthorized
from ...store import connections, users
from ...store.keys import Keys
from ..extensions import client_ip, limiter, login_manager, state
from ..request import json_field, read_json_object, require_json_content_type

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


class User(UserMixin):
    """The signed-in user as flask-login sees it; its id is the session token."""

    def __init__(self, user_id: str, email: str, session_token: str = "") -> None:
        self.id = user_id
        self.email = email
        self.session_token = session_token

    def get_id(self) -> str:
        return self.session_token

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "email": self.email}


@login_manager.user_loader
def _load_user(token: str) -> User | None:
    record = users.session_user(state().redis, token)
    return None if record is None else User(record.id, record.email, token)


@login_manager.unauthorized_handler
def _unauthorized() -> Response:
    raise Unauthorized("Authentication required")


def bearer_token() -> str | None:
    """The API key from `Authorization: Bearer …`, None when the header is absent."""
    header = request.headers.get("Authorization")
    return None if header is None else users.parse_bearer(header)


def request_key_grant() -> users.KeyGrant | None:
    """What the request's API key grants; None without one, 401 for a bad one."""
    api_key = bearer_token()
    return None if api_key is None else users.key_grant(state().redis, api_key)


def connection_for_request_key() -> str | None:
    """The connection id of the request's API key (any scope); None without one,
    401 for a bad one."""
    grant = request_key_grant()
    return None if grant is None else grant.connection_id


def require_writable() -> None:
    """403 when this instance runs with SLUICE_READ_ONLY=1: every request that
    changes monitored data or connections, or acts, calls this first."""
    if state().settings.read_only:
        raise Forbidden(
            "This Sluice instance is read-only (SLUICE_READ_ONLY=1)",
            {"readOnly": "writes are refused on this instance"},
        )


def require_write_key() -> users.KeyGrant:
    """For key-authenticated writes (ingest, and any action): the grant of the
    request's key if it may write. 401 without a key or with a bad one (before
    anything else), then 403 in read-only mode, 403 for a read key."""
    grant = request_key_grant()
    if grant is None:
        raise Unauthorized("Send 'Authorization: Bearer sk_live_…'")
    require_writable()
    if grant.scope != users.WRITE_SCOPE:
        raise Forbidden(
            "This API key is read-only: it may read streams and jobs, not write",
            {"scope": grant.scope},
        )
    return grant


def reader_credentials() -> str | None:
    """For reading a connection (its stream, its jobs): the connection id of the
    request's API key, or None for a signed-in user; 401 with neither (or with
    a bad key). Call `check_reader` once the connection id is known."""
    key_connection = connection_for_request_key()
    if key_connection is None and not current_user.is_authenticated:
        raise Unauthorized("Sign in or send 'Authorization: Bearer sk_live_…'")
    return key_connection


def check_reader(key_connection: str | None, connection_id: str) -> None:
    """404 unless the key is the connection's, or the signed-in user owns it (never
    "forbidden", so that nobody learns which ids exist)."""
    r = state().redis
    if key_connection is not None:
        if key_connection != connection_id or not connections.connection_exists(r, connection_id):
            raise NotFound("Connection not found")
    else:
        connections.owned_connection(r, current_user.id, connection_id)


def _login_ip_key() -> str:
    return Keys.login_ip_limit(client_ip())


def _login_account_key() -> str:
    """The account an attempt is aimed at, whichever IP it comes from (hashed: no
    email addresses in key names)."""
    email = json_field("email")
    email = users.normalise_email(email)[: users.MAX_EMAIL] if isinstance(email, str) else ""
    return Keys.login_account_limit(users.sha256_hex(email)[:32])


def _failed(response: Response) -> bool:
    return response.status_code == 401


@bp.post("/login")
# Every attempt from one client IP, whatever account it tries.
@limiter.limit(lambda: state().settings.login_rate_limit, key_func=_login_ip_key)
# Failed attempts on one account from anywhere: a stepped backoff (by default a
# minute after 5 failures, at most 15 minutes after 15); a right password does
# not count, so the owner is locked out only while someone keeps guessing.
@limiter.limit(
    lambda: state().settings.login_account_rate_limit,
    key_func=_login_account_key,
    deduct_when=_failed,
)
def login() -> tuple[Response, int]:
    require_json_content_type()
    body = read_json_object()
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise Invalid(
            "email and password are required",
            {
                k: "required string"
                for k in ("email", "password")
                if not isinstance(body.get(k), str)
            },
        )
    if len(password) > users.MAX_PASSWORD or len(email) > users.MAX_EMAIL:
        raise Invalid("email or password too long", {"password": "too long"})
    r = state().redis
    record = users.check_password(r, email, password)
    if record is None:
        raise Unauthorized("Wrong email or password")
    token = users.start_session(r, record.id, state().settings.session_days * 86_400)
    user = User(record.id, record.email, token)
    login_user(user)
    return jsonify({"user": user.to_json()}), 200


@bp.post("/logout")
def logout() -> tuple[str, int]:
    require_json_content_type()
    if current_user.is_authenticated:
        users.end_session(state().redis, current_user.session_token)
    logout_user()
    return "", 204


@bp.get("/me")
@login_required
def me() -> Response:
    return jsonify({"user": current_user.to_json()})
