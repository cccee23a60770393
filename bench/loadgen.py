"""Closed-loop load generator for ``POST /v1/predict`` (loopback only, bounded in requests and time).

    python -m bench.loadgen --url http://127.0.0.1:8000 --tasks a b c d --mix uniform \
        --concurrency 16 --requests 600 --texts texts.json [--max-seconds 20] [--warmup 32]

``--concurrency`` clients each send one request, wait for its answer, and send the next, until
``--requests`` measured requests (after ``--warmup`` unmeasured ones) have been sent or
``--max-seconds`` have passed. The task of the i-th request follows ``--mix``:

- ``identical``: always the first task;
- ``uniform``: uniformly at random over ``--tasks``;
- ``zipf``: task j (1-based) with probability proportional to 1 / j**s (``--zipf-s``, default 1);
- ``distinct``: round-robin over ``--tasks``, so consecutive requests always name another task.

Texts are taken round-robin from ``--texts`` (a JSON list of strings), ``--inputs`` per request.
Prints one JSON object: requests, errors, inputs/s, latency percentiles in ms.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per
client) rather than httpx, so that the generator takes as little of the CPU the server also
needs as possible. It refuses any host but 127.0.0.1 / localhost / ::1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MIXES = ("identical", "uniform", "zipf", "distinct")


def task_sequence(tasks: list[str], mix: str, count: int, seed: int, zipf_s: float = 1.0) -> list[str]:
    """The task of each request, in order (deterministic for a seed)."""
    rng = random.Random(seed)
    if mix == "identical":
        return [tasks[0]] * count
    if mix == "uniform":
        return [rng.choice(tasks) for _ in range(count)]
    if mix == "zipf":
        weights = [1 / (j**zipf_s) for j in range(1, len(tasks) + 1)]
        return rng.choices(tasks, weights=weights, k=count)
    if mix == "distinct":
        return [tasks[i % len(tasks)] for i in range(count)]
    raise ValueError(f"unknown mix {mix!r}; choose one of {', '.join(MIXES)}")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read a Content-Length response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run(args: argparse.Namespace, texts: list[str]) -> dict:
    parts = urlsplit(args.url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"loadgen: refusing {args.url}: only loopback servers (127.0.0.1) may be targeted")
    total = args.warmup + args.requests
    tasks = task_sequence(args.tasks, args.mix, total, args.seed, args.zipf_s)
    bodies = []
    for i, task in enumerate(tasks):
        inputs = [texts[(i * args.inputs + j) % len(texts)] for j in range(args.inputs)]
        bodies.append(json.dumps({"task": task, "inputs": inputs, "top_k": 1}).encode())
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    measured_started: float | None = None
    measured_done = 0
    deadline = time.monotonic() + args.max_seconds

    async def client() -> None:
        nonlocal next_index, measured_started, measured_done
        connection = Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            while next_index < total and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                if index == args.warmup and measured_started is None:
                    measured_started = time.perf_counter()
                started = time.perf_counter()
                try:
                    status, _ = await asyncio.wait_for(connection.post("/v1/predict", bodies[index]), args.timeout)
                except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    await connection.close()
                    status = type(exc).__name__
                elapsed = time.perf_counter() - started
                if index >= args.warmup:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1
                    measured_done += 1
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    ended = time.perf_counter()
    seconds = ended - measured_started if measured_started is not None else float("nan")
    latencies.sort()
    ok = len(latencies)
    return {
        "mix": args.mix,
        "tasks": len(set(tasks)),
        "concurrency": args.concurrency,
        "requests": measured_done,
        "ok": ok,
        "errors": errors,
        "seconds": round(seconds, 3),
        "inputs_per_s": round(ok * args.inputs / seconds, 2) if seconds == seconds and seconds > 0 else 0.0,
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p95_ms": round(1000 * percentile(latencies, 95), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "mean_ms": round(1000 * sum(latencies) / ok, 2) if ok else float("nan"),
        "stopped_by_time": measured_done < args.requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--mix", choices=MIXES, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200, help="measured requests (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured requests sent first")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop sending after this long")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--inputs", type=int, default=1, help="texts per request")
    parser.add_argument("--texts", required=True, help="JSON list of input texts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not (1 <= args.concurrency <= 1024 and 1 <= args.requests <= 1_000_000 and args.max_seconds <= 3600):
        parser.error("concurrency 1..1024, requests 1..1e6, max-seconds <= 3600")
    with open(args.texts, encoding="utf-8") as handle:
        texts = [t for t in json.load(handle) if isinstance(t, str) and t]
    if not texts:
        parser.error(f"{args.texts}: no texts")
    result = asyncio.run(run(args, texts))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
