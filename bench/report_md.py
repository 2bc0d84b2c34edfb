"""Turn a bench JSON (bench/results/latest.json) into the README's figures table.

    python bench/report_md.py [results.json] [--capacity other.json]

Why: the README carries the same numbers the bench
printed; generating the table avoids copying them by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ORDER = ["sluice", "flask-sse", "sse-starlette", "raw-gevent"]


def g(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def n(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v < 100:
        return f"{v:.1f}{unit}"
    return f"{round(v):,}{unit}"


def rows(res: dict[str, Any]) -> list[tuple[str, list[str]]]:
    t = res["targets"]
    names = [x for x in ORDER if x in t] + [x for x in t if x not in ORDER]

    def each(fn: Any) -> list[str]:
        out = []
        for name in names:
            try:
                out.append(fn(t[name]))
            except (KeyError, TypeError):
                out.append("–")
        return out

    def phase(r: dict, rate: str, key: str, unit: str = "") -> str:
        return n(g(r, "a", "phases", rate, key), unit)

    def flag(r: dict, rate: str) -> str:
        gen = g(r, "a", "phases", rate, "generator") or {}
        return " (generator-bound)" if gen.get("bottleneck") else ""

    out = [
        ("", names),
        (
            "(a) peak deliveries/s, 500 clients",
            each(
                lambda r: (
                    n(g(r, "a", "peak_deliveries_per_s"))
                    + flag(
                        r,
                        max(
                            r["a"]["phases"], key=lambda k: r["a"]["phases"][k]["deliveries_per_s"]
                        ),
                    )
                )
            ),
        ),
        (
            "(a) deliveries/s at 200 / 1,000 / 4,000 events/s",
            each(
                lambda r: " / ".join(
                    phase(r, k, "deliveries_per_s") for k in ("200", "1000", "4000")
                )
            ),
        ),
        (
            "(a) delivered fraction at 200 / 1,000 / 4,000",
            each(
                lambda r: " / ".join(
                    phase(r, k, "delivered_fraction") for k in ("200", "1000", "4000")
                )
            ),
        ),
        (
            "(a) p99 latency at 200 / 1,000 / 4,000 (ms)",
            each(lambda r: " / ".join(phase(r, k, "p99_ms") for k in ("200", "1000", "4000"))),
        ),
        (
            "(a) server CPU per delivery at 4,000/s (µs)",
            each(lambda r: phase(r, "4000", "server_us_per_delivery")),
        ),
        (
            "(b) 1,000 clients × 20/s: p50 / p99 (ms)",
            each(lambda r: f"{n(g(r, 'b', 'p50_ms'))} / {n(g(r, 'b', 'p99_ms'))}"),
        ),
        ("(b) server CPU (% of a core)", each(lambda r: n(g(r, "b", "server_cpu_pct"), " %"))),
        (
            "(c) RSS per idle stream (3,000 streams)",
            each(lambda r: n(g(r, "c", "rss_per_stream_kb"), " KB")),
        ),
        (
            "(c) heartbeat max gap (interval 2 s)",
            each(
                lambda r: (
                    n(g(r, "c", "heartbeat_max_gap_s"), " s")
                    if g(r, "c", "heartbeat_s")
                    else "no heartbeat"
                )
            ),
        ),
        (
            "Redis connections with 3,000 viewers",
            each(lambda r: n(g(r, "c", "redis_connected_clients"))),
        ),
        (
            "(e) 50 conns × 20 viewers: deliveries/s, p99",
            each(lambda r: f"{n(g(r, 'e', 'deliveries_per_s'))}, {n(g(r, 'e', 'p99_ms'))} ms"),
        ),
        (
            "(f) readers' p99 before → during 10 stalled (ms)",
            each(
                lambda r: (
                    f"{n(g(r, 'f', 'readers_baseline', 'p99_ms'))} → "
                    f"{n(g(r, 'f', 'readers_with_stalled', 'p99_ms'))}"
                )
            ),
        ),
        (
            "(f) stalled clients cut off / complete after resume",
            each(
                lambda r: (
                    f"{g(r, 'f', 'stallers_cut_off')} / {g(r, 'f', 'stallers_complete')}"
                    f" of {g(r, 'f', 'stallers')} (gaps {g(r, 'f', 'stallers_gaps')},"
                    f" repeats {g(r, 'f', 'stallers_repeats')})"
                )
            ),
        ),
        (
            "ingest, batches of 100, 1 worker (events/s)",
            each(lambda r: n(g(r, "ingest", "events_per_s")) if "ingest" in r else "n/a"),
        ),
        (
            "(d) idle streams held, 2 workers",
            each(
                lambda r: (
                    f"{n(g(r, 'd', 'open_streams'))} ({n(g(r, 'd', 'rss_per_stream_kb'))} KB"
                    f"/stream, hb max gap {n(g(r, 'd', 'heartbeat_max_gap_s'))} s)"
                    if "d" in r
                    else "not run"
                )
            ),
        ),
    ]
    return out


def main() -> None:
    args = sys.argv[1:]
    cap = None
    if "--capacity" in args:
        i = args.index("--capacity")
        cap = json.loads(Path(args[i + 1]).read_text())
        del args[i : i + 2]
    path = Path(args[0]) if args else Path(__file__).parent / "results" / "latest.json"
    res = json.loads(path.read_text())
    if cap is not None:  # a separate, bigger (d) run
        res["targets"].setdefault("sluice", {})["d"] = cap["targets"]["sluice"]["d"]
    m = res["machine"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, {res['redis']}; bench runtime {res['runtime_s']} s.\n"
    )
    table = rows(res)
    head = table[0][1]
    print("| | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for label, cells in table[1:]:
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
