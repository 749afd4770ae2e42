"""A one-shot burst: N connections open first, then N requests sent at once (own process).

wrk keeps every connection busy for a duration; a stampede is N requests released together,
each timed alone, so it has its own small client: `python -m bench.burst` reads a JSON spec
on stdin and prints the latencies' summary as JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (nearest rank) of values; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def request_bytes(spec: dict[str, Any]) -> bytes:
    """Return the raw HTTP/1.1 request a connection sends: a JSON POST, or a GET when the
    spec has no body."""
    if "body" not in spec:
        return (f"GET {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
                f"Authorization: {spec['authorization']}\r\nConnection: close\r\n\r\n"
                ).encode()
    body = json.dumps(spec["body"]).encode()
    head = (
        f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
        f"Authorization: {spec['authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _one(spec: dict[str, Any], start: asyncio.Event, payload: bytes) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
    try:
        await start.wait()
        began = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return status, time.perf_counter() - began
    finally:
        writer.close()


async def burst(spec: dict[str, Any]) -> dict[str, Any]:
    """Open every connection, release every request together, and summarise the answers."""
    # `requests`: per-connection variations (path, authorization), taken in turn.
    variants = [request_bytes({**spec, **v}) for v in spec.get("requests", [{}])]
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(spec, start, variants[n % len(variants)]))
             for n in range(spec["count"])]
    await asyncio.sleep(spec.get("connect_seconds", 2.0))
    released = time.perf_counter()
    start.set()
    results = await asyncio.wait_for(
        asyncio.gather(*tasks, return_exceptions=True), spec.get("timeout", 120))
    wall = time.perf_counter() - released
    latencies = [r[1] * 1000 for r in results if isinstance(r, tuple)]
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r[0]) if isinstance(r, tuple) else type(r).__name__
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "count": spec["count"], "statuses": statuses, "wall_ms": wall * 1000,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=0.0),
    }


def main() -> None:
    """Read the spec from stdin, run the burst, print the summary as JSON."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(burst(spec))))


if __name__ == "__main__":
    main()
