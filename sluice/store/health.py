"""What about a Redis would lose or evict what Sluice keeps in it."""

from __future__ import annotations

from typing import Any

import redis


def durability_warnings(client: redis.Redis) -> list[str]:
    """What about this Redis would lose or evict users, sessions, keys and events.

    A question Redis will not answer (managed services often refuse CONFIG)
    yields no warning rather than an error. Raises only `redis.ConnectionError`
    / `redis.TimeoutError`, when Redis cannot be asked at all.
    """
    warnings = []
    persistence = _info(client, "persistence")
    if persistence is not None and not int(persistence.get("aof_enabled", 0) or 0):
        try:
            save = client.config_get("save").get("save")
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.RedisError:
            save = None  # CONFIG refused: the save points are unknown
        if save is not None and not str(save).strip():
            warnings.append(
                "Redis keeps nothing on disk (no AOF, no RDB save points): users, sessions, "
                "API keys and events are lost when it restarts; enable appendonly or save"
            )
    memory = _info(client, "memory")
    policy = str((memory or {}).get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: when full it evicts keys, users, sessions "
            "and API keys among them; set maxmemory-policy noeviction"
        )
    return warnings


def _info(client: redis.Redis, section: str) -> dict[str, Any] | None:
    try:
        return client.info(section)
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except redis.RedisError:
        return None
