"""Users, login sessions and API keys in Redis.

Passwords are stored only as Argon2id hashes; session tokens and API keys
(256-bit random secrets) only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import Conflict, Invalid, Unauthorized
from .client import Redis, text
from .keys import Keys

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
MAX_EMAIL = 320
MAX_PASSWORD = 1024
MIN_PASSWORD = 8
API_KEY_PREFIX = "sk_live_"
MAX_API_KEY = 200

_hasher = PasswordHasher()
#: Verified against when the email is unknown: the same work either way.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _password_problem(password: Any) -> str | None:
    if not isinstance(password, str) or not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        return f"must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    return None


def validate_credentials(email: Any, password: Any) -> tuple[str, str]:
    """(normalised email, password), or `Invalid` naming what is wrong."""
    details: dict[str, str] = {}
    if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
        details["email"] = "must be an email address"
    problem = _password_problem(password)
    if problem is not None:
        details["password"] = problem
    if details:
        raise Invalid("Invalid credentials format", details)
    assert isinstance(email, str) and isinstance(password, str)
    return normalise_email(email), password


def create_user(r: Redis, email: Any, password: Any) -> dict[str, str]:
    """Create a user ({"id", "email"}); the password is stored only as an Argon2id hash."""
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
        raise Conflict("A user with this email already exists", {"email": "taken"})
    return {"id": user_id, "email": email}


def set_password(r: Redis, user_id: str, password: str) -> None:
    problem = _password_problem(password)
    if problem is not None:
        raise Invalid("Invalid password", {"password": problem})
    r.hset(Keys.user(user_id), "password", _hasher.hash(password))


def find_user_id(r: Redis, email: str) -> str | None:
    raw = r.get(Keys.user_by_email(normalise_email(email)))
    return text(raw) if raw else None


def check_password(r: Redis, email: str, password: str) -> UserRecord | None:
    """The user if the password matches; constant work whether or not they exist."""
    user_id = find_user_id(r, email)
    stored = r.hget(Keys.user(user_id), "password") if user_id else None
    try:
        if user_id is None or stored is None:
            _hasher.verify(_DUMMY_HASH, password)
            return None
        _hasher.verify(text(stored), password)
    except (VerificationError, InvalidHashError):
        return None
    return UserRecord(user_id, normalise_email(email))


# -- sessions ------------------------------------------------------------------


def sha256_hex(secret: str) -> str:
    """How session tokens and API keys are stored: 256-bit random secrets need no
    slow hash (a slow hash protects guessable passwords). Also keeps email
    addresses out of rate-limit key names."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def start_session(r: Redis, user_id: str, ttl_seconds: int) -> str:
    """A new session token for the user (what the cookie carries)."""
    token = secrets.token_urlsafe(32)
    r.set(Keys.session(sha256_hex(token)), user_id, ex=ttl_seconds)
    return token


def session_user(r: Redis, token: str) -> UserRecord | None:
    """The user a live session token belongs to, or None."""
    user_id = r.get(Keys.session(sha256_hex(token)))
    if user_id is None:
        return None
    email = r.hget(Keys.user(text(user_id)), "email")
    if email is None:
        return None
    return UserRecord(text(user_id), text(email))


def end_session(r: Redis, token: str) -> None:
    r.delete(Keys.session(sha256_hex(token)))


# -- API keys ------------------------------------------------------------------------


hash_api_key = sha256_hex


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def parse_bearer(header: str) -> str:
    """The API key of an `Authorization` header value, or `Unauthorized`."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if (
        scheme.lower() != "bearer"
        or not token.startswith(API_KEY_PREFIX)
        or len(token) > MAX_API_KEY
    ):
        raise Unauthorized("Authorization must be 'Bearer sk_live_…'")
    return token


#: Scopes of API keys: `write` (the connection's ingest key: ingest and read) and
#: `read` (streams and the job API only).
WRITE_SCOPE = "write"
READ_SCOPE = "read"
#: The id of a connection's one write key (the ingest key, rotated, never deleted).
INGEST_KEY_ID = "ingest"


@dataclass(frozen=True)
class KeyGrant:
    """What an API key may do: which connection, which scope, which key of it."""

    connection_id: str
    scope: str
    key_id: str


def grant_value(connection_id: str, scope: str = WRITE_SCOPE, key_id: str = INGEST_KEY_ID) -> str:
    """The value stored under a key's hash: the connection id alone for the ingest
    key (the layout every existing key has), `<connection> <scope> <key id>` otherwise."""
    if scope == WRITE_SCOPE and key_id == INGEST_KEY_ID:
        return connection_id
    return f"{connection_id} {scope} {key_id}"


def parse_grant(value: str) -> KeyGrant:
    connection_id, _, rest = value.partition(" ")
    if not rest:
        return KeyGrant(connection_id, WRITE_SCOPE, INGEST_KEY_ID)
    scope, _, key_id = rest.partition(" ")
    return KeyGrant(connection_id, scope, key_id)


def key_grant(r: Redis, api_key: str) -> KeyGrant:
    """What an API key grants, or `Unauthorized` for an unknown (or revoked) key."""
    value = r.get(Keys.api_key(hash_api_key(api_key)))
    if value is None:
        raise Unauthorized("Invalid API key")
    return parse_grant(text(value))


def connection_for_api_key(r: Redis, api_key: str) -> str:
    """The connection id an API key belongs to (any scope), or `Unauthorized`."""
    return key_grant(r, api_key).connection_id


def development_secret(r: Redis) -> str:
    """A random `SECRET_KEY` kept in Redis, shared by every worker (and restart) of a
    development setup, so nobody can forge a session with a well-known default."""
    for _ in range(2):  # a second try if it was deleted in between
        r.set(Keys.dev_secret(), secrets.token_hex(32), nx=True)
        secret = r.get(Keys.dev_secret())
        if secret is not None:
            return text(secret)
    raise RuntimeError("could not keep a development secret key in Redis")
