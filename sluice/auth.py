"""Users, sessions (flask-login) and API-key authentication.

A session cookie carries a random session token, not the user id: logging
out deletes the token in Redis, so a copied cookie stops working at once
(flask-login's "alternative id" pattern).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from typing import Any

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import Blueprint, Response, jsonify, request
from flask_login import UserMixin, current_user, login_required, login_user, logout_user

from .errors import ApiError
from .extensions import limiter, login_manager, state
from .redis import Keys
from .validation import json_field, read_json_object, require_json_content_type

bp = Blueprint("auth", __name__, url_prefix="/api/auth")

_hasher = PasswordHasher()
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
MAX_PASSWORD = 1024
MIN_PASSWORD = 8
API_KEY_PREFIX = "sk_live_"


class User(UserMixin):
    def __init__(self, user_id: str, email: str, session_token: str = "") -> None:
        self.id = user_id
        self.email = email
        self.session_token = session_token

    def get_id(self) -> str:
        return self.session_token

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "email": self.email}


def _session_key(token: str) -> str:
    return f"sluice:session:{hashlib.sha256(token.encode()).hexdigest()}"


def normalise_email(email: str) -> str:
    return email.strip().lower()


def validate_credentials(email: Any, password: Any) -> tuple[str, str]:
    details: dict[str, str] = {}
    if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
        details["email"] = "must be an email address"
    if not isinstance(password, str) or not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        details["password"] = f"must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    if details:
        raise ApiError(400, "Invalid credentials format", details)
    return normalise_email(email), password


def create_user(r: redis.Redis, email: str, password: str) -> dict[str, str]:
    """Create a user; the password is stored only as an Argon2id hash."""
    email, password = validate_credentials(email, password)
    user_id = str(uuid.uuid4())
    # The user first, then the email that points at it: a failure in between
    # leaves an unreachable hash, never an email taken by nobody.
    r.hset(
        Keys.user(user_id),
        mapping={
            "id": user_id,
            "email": email,
            "password": _hasher.hash(password),
            "createdAt": str(int(time.time() * 1000)),
        },
    )
    if not r.set(Keys.user_by_email(email), user_id, nx=True):
        r.delete(Keys.user(user_id))
        raise ApiError(409, "A user with this email already exists", {"email": "taken"})
    return {"id": user_id, "email": email}


def find_user_id(r: redis.Redis, email: str) -> str | None:
    raw = r.get(Keys.user_by_email(normalise_email(email)))
    return raw.decode() if raw else None


def check_password(r: redis.Redis, email: str, password: str) -> dict[str, str] | None:
    """The user if the password matches; constant work whether or not they exist."""
    user_id = find_user_id(r, email)
    stored = r.hget(Keys.user(user_id), "password") if user_id else None
    try:
        if stored is None:
            _hasher.verify(_DUMMY_HASH, password)
            return None
        _hasher.verify(stored.decode(), password)
    except (VerificationError, InvalidHashError):
        return None
    return {"id": user_id, "email": normalise_email(email)}


_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def start_session(r: redis.Redis, user: dict[str, str], ttl_seconds: int) -> User:
    token = secrets.token_urlsafe(32)
    r.set(_session_key(token), user["id"], ex=ttl_seconds)
    return User(user["id"], user["email"], token)


@login_manager.user_loader
def _load_user(token: str) -> User | None:
    r = state().redis
    user_id = r.get(_session_key(token))
    if user_id is None:
        return None
    email = r.hget(Keys.user(user_id.decode()), "email")
    if email is None:
        return None
    return User(user_id.decode(), email.decode(), token)


@login_manager.unauthorized_handler
def _unauthorized() -> Response:
    raise ApiError(401, "Authentication required")


def hash_api_key(api_key: str) -> str:
    """API keys are 256-bit random secrets, so a fast hash is safe and enough
    (a slow hash protects low-entropy passwords; these have nothing to guess)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token() -> str | None:
    """The API key from `Authorization: Bearer …`, None when the header is absent."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(API_KEY_PREFIX) or len(token) > 200:
        raise ApiError(401, "Authorization must be 'Bearer sk_live_…'")
    return token


def connection_for_api_key(r: redis.Redis, api_key: str) -> str:
    connection_id = r.get(Keys.api_key(hash_api_key(api_key)))
    if connection_id is None:
        raise ApiError(401, "Invalid API key")
    return connection_id.decode()


def _login_ip_key() -> str:
    return f"login-ip:{request.remote_addr or 'unknown'}"


def _login_account_key() -> str:
    """The account an attempt is aimed at, whichever IP it comes from (hashed: no
    email addresses in key names)."""
    email = json_field("email")
    email = normalise_email(email)[:320] if isinstance(email, str) else ""
    return "login-account:" + hashlib.sha256(email.encode("utf-8", "replace")).hexdigest()[:32]


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
        raise ApiError(
            400,
            "email and password are required",
            {
                k: "required string"
                for k in ("email", "password")
                if not isinstance(body.get(k), str)
            },
        )
    if len(password) > MAX_PASSWORD or len(email) > 320:
        raise ApiError(400, "email or password too long", {"password": "too long"})
    r = state().redis
    user = check_password(r, email, password)
    if user is None:
        raise ApiError(401, "Wrong email or password")
    settings = state().settings
    session_user = start_session(r, user, settings.session_days * 86_400)
    login_user(session_user)
    return jsonify({"user": session_user.to_json()}), 200


@bp.post("/logout")
def logout() -> tuple[str, int]:
    require_json_content_type()
    if current_user.is_authenticated:
        state().redis.delete(_session_key(current_user.session_token))
    logout_user()
    return "", 204


@bp.get("/me")
@login_required
def me() -> Response:
    return jsonify({"user": current_user.to_json()})
