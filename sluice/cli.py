"""`python -m sluice …`: the command line."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from .contract import FRAMEWORKS

if TYPE_CHECKING:
    from .store.client import Redis

P = ParamSpec("P")
R = TypeVar("R")


def _redis_url() -> str:
    """REDIS_URL, required: users and keys written to a throwaway embedded
    server would vanish when the command exits."""
    url = os.environ.get("REDIS_URL")
    if not url:
        raise click.ClickException(
            "REDIS_URL is not set: set it to the Redis your Sluice server uses, e.g. "
            "REDIS_URL=redis://127.0.0.1:6379/0 (without it, what this command writes would "
            "go to a temporary database that vanishes when it exits)"
        )
    return url


def _client() -> Redis:
    from .store.client import RedisUnavailable, check_reachable, connect

    url = _redis_url()
    try:
        check_reachable(url)
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    return connect(url)


def _fail_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the domain's errors, and Redis failing midway, into one clean CLI error
    line (exit 1) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from .errors import SluiceError
        from .store.client import STORE_ERRORS, redis_problem

        try:
            return func(*args, **kwargs)
        except SluiceError as exc:
            raise click.ClickException(str(exc)) from None
        except STORE_ERRORS as exc:
            raise click.ClickException(
                redis_problem(os.environ.get("REDIS_URL", ""), exc)
            ) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=None, version=__import__("sluice").__version__)
def main() -> None:
    """Sluice: a live stream of what your background jobs are doing.

    Settings come from the environment (REDIS_URL, SECRET_KEY, ...); see the README.
    """


@main.command("create-user")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_fail_cleanly
def create_user_command(email: str, password_stdin: bool) -> None:
    """Create a dashboard user (the password is stored as an Argon2id hash)."""
    from .store.users import create_user

    r = _client()  # before the password prompt: no Redis, no point typing one
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = create_user(r, email, password)
    click.echo(json.dumps(user))


@main.command("create-connection")
@click.option("--user", "email", required=True, help="Email of the owner.")
@click.option(
    "--framework",
    type=click.Choice(FRAMEWORKS),
    default="celery",
    show_default=True,
)
@click.argument("name")
@_fail_cleanly
def create_connection_command(email: str, framework: str, name: str) -> None:
    """Create a connection; prints {"id", "name", "apiKey"} (the key is shown only once)."""
    from .store.connections import create_connection
    from .store.users import find_user_id

    r = _client()
    user_id = find_user_id(r, email)
    if user_id is None:
        raise click.ClickException(f"no user with email {email!r}")
    created = create_connection(r, user_id, name, framework)
    click.echo(
        json.dumps({"id": created["id"], "name": created["name"], "apiKey": created["apiKey"]})
    )


@main.command("rotate-key")
@click.option("--user", "email", required=True, help="Email of the owner.")
@click.argument("connection_id")
@_fail_cleanly
def rotate_key_command(email: str, connection_id: str) -> None:
    """Give a connection a new ingest key; the old one stops working at once. Prints
    {"id", "name", "apiKey"} like create-connection (the key is shown only once)."""
    from .schema import parse_uuid
    from .store.connections import owned_connection, rotate_api_key
    from .store.users import find_user_id

    connection_id = parse_uuid(connection_id, "CONNECTION_ID")
    r = _client()
    user_id = find_user_id(r, email)
    if user_id is None:
        raise click.ClickException(f"no user with email {email!r}")
    api_key = rotate_api_key(r, connection_id, user_id)
    name = owned_connection(r, user_id, connection_id)[b"name"].decode()
    click.echo(json.dumps({"id": connection_id, "name": name, "apiKey": api_key}))


@main.command()
@click.option(
    "--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="8000"
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
@click.option(
    "--rate", type=float, default=20.0, show_default=True, help="Synthetic events per second."
)
@click.option("--no-traffic", is_flag=True, help="Serve without the synthetic producer.")
def demo(port: int, host: str, workers: int, rate: float, no_traffic: bool) -> None:
    """The one-command tour: Redis (embedded unless REDIS_URL is set), a demo user and
    connection, live synthetic traffic, and the server on gunicorn+gevent."""
    from .config import ConfigError, require_redis_url_in_production
    from .demo import run_demo

    try:
        require_redis_url_in_production()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    redis_url = os.environ.get("REDIS_URL") or None
    run_demo(
        redis_url=redis_url,
        host=host,
        port=port,
        workers=workers,
        rate=rate,
        traffic=not no_traffic,
    )


@main.command()
@click.option(
    "--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="8000"
)
@click.option(
    "--workers",
    type=int,
    default=lambda: int(os.environ.get("WEB_CONCURRENCY", "2")),
    show_default="2",
)
def serve(port: int, workers: int) -> None:
    """Run the server under gunicorn with Sluice's settings (production-style)."""
    from .demo import gunicorn_command

    env = dict(os.environ, PORT=str(port), WEB_CONCURRENCY=str(workers))
    os.execvpe(sys.executable, gunicorn_command(), env)


@main.command()
@click.option("--url", required=True, help="Base URL of Sluice, e.g. http://127.0.0.1:8000")
@click.option(
    "--api-key", required=True, envvar="SLUICE_API_KEY", help="The connection's sk_live_ key."
)
@click.option("--connection", "connection_id", required=True, help="Connection id (UUID).")
@click.option("--types", default="", help="Comma-separated types: job,worker,queue or event names.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.option("--heartbeats", is_flag=True, help="Also print heartbeats.")
@click.option("--last-event-id", default=None, help="Resume after this event id.")
def tail(
    url: str,
    api_key: str,
    connection_id: str,
    types: str,
    as_json: bool,
    heartbeats: bool,
    last_event_id: str | None,
) -> None:
    """Follow a connection's live stream in the terminal (reconnects and resumes)."""
    from .client.tail import follow

    follow(
        url,
        api_key,
        connection_id,
        types=types,
        as_json=as_json,
        heartbeats=heartbeats,
        last_event_id=last_event_id,
    )


# --- celery-agent (owned by the Celery bridge) ---------------------------------
# The command lives in sluice/integrations/celery/agent.py, which imports only click
# and the standard library at import time: Celery itself is imported inside the
# command, so `python -m sluice --help` works without Celery installed.
from .integrations.celery.agent import celery_agent_command  # noqa: E402

main.add_command(celery_agent_command, "celery-agent")
