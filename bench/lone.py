"""A lone request against the raw engine, measured in pairs (A/B/A/B).

On a shared, noisy machine two latency windows measured a minute apart can
differ by more than the overhead we want to see. So each round makes one raw
call (decode + inference of an image in this process, as the served path
decodes it: at the model's size) and one served call of the same image, in
alternating order (raw first, then served first), and the figure is the median
of the per-round differences, with their quartiles as the spread. Whatever
slows the machine for a moment slows both calls of a pair.

Where the serving processes are known, the CPU they spent per request is set
against the raw call's CPU (this process's, all threads): the overhead in CPU
milliseconds, which other tenants of the machine disturb far less than time.

Standalone, for profiling the embedded bridge (start it under py-spy, say):

    python -m bench.lone --url http://127.0.0.1:4343 --repository models --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from bench.cpu import snapshot, usage
from bench.plain_http import PlainHttp
from engines.detector import Detector
from engines.images import DecodeLimits, decode_for_model

#: One served call of an image; raises or returns when its answer is in.
Served = Callable[[int, bytes], Awaitable[None]]


@dataclass(frozen=True)
class PairResult:
    rounds: int
    diff_p50_ms: float
    """Median of (served - raw) over the rounds: the overhead of serving."""
    diff_p25_ms: float
    diff_p75_ms: float
    raw_p50_ms: float
    served_p50_ms: float
    served_p99_ms: float
    served_mean_ms: float
    raw_cpu_ms: float
    """CPU of one raw call (this process, every thread)."""
    served_cpu_ms: dict[str, float]
    """CPU per served request of each serving process role (empty: not measured)."""

    @property
    def cpu_overhead_ms(self) -> float | None:
        """Served CPU per request over the raw call's; None when not measured."""
        if not self.served_cpu_ms:
            return None
        return sum(self.served_cpu_ms.values()) - self.raw_cpu_ms

    def text(self) -> str:
        cpu = ""
        if self.served_cpu_ms:
            roles = ", ".join(f"{k} {v:.2f}" for k, v in self.served_cpu_ms.items())
            cpu = f"; CPU ms/request: raw {self.raw_cpu_ms:.2f}, served {roles}"
        return (
            f"pairs {self.rounds}: served - raw p50 {self.diff_p50_ms:+.2f} ms "
            f"(quartiles {self.diff_p25_ms:+.2f} / {self.diff_p75_ms:+.2f}); "
            f"raw p50 {self.raw_p50_ms:.2f}, served p50 {self.served_p50_ms:.2f} ms{cpu}"
        )


def raw_call(detector: Detector, limits: DecodeLimits | None = None) -> Callable[[bytes], None]:
    """Decode as the pipeline does (at the model's size), then one engine call of 1."""

    def call(data: bytes) -> None:
        image = decode_for_model(data, limits or DecodeLimits(), detector.resizer)
        detector.detect([image.pixels], None, [(image.width, image.height)])

    return call


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def pairs(
    detector: Detector,
    jpegs: Sequence[bytes],
    served: Served,
    rounds: int,
    warmup: int = 8,
    pids: dict[str, list[int]] | None = None,
) -> PairResult:
    """`rounds` rounds of one raw and one served call of the same image, in
    alternating order; see the module docstring. `pids`: the serving processes
    by role, whose CPU per request is measured."""
    raw = raw_call(detector)
    for i in range(warmup):
        raw(jpegs[i % len(jpegs)])
        await served(i, jpegs[i % len(jpegs)])
    raws: list[float] = []
    serveds: list[float] = []
    raw_cpu_s = 0.0
    before = snapshot(pids or {})
    for i in range(rounds):
        data = jpegs[i % len(jpegs)]
        order = ("raw", "served") if i % 2 == 0 else ("served", "raw")
        took: dict[str, float] = {}
        for which in order:
            t0 = time.perf_counter()
            if which == "raw":
                c0 = time.process_time()
                raw(data)
                raw_cpu_s += time.process_time() - c0
            else:
                await served(i, data)
            took[which] = (time.perf_counter() - t0) * 1000
        raws.append(took["raw"])
        serveds.append(took["served"])
    spent = usage(before, snapshot(pids or {}), rounds).per_image_ms
    diffs = [s - r for s, r in zip(serveds, raws, strict=True)]
    return PairResult(
        rounds=rounds,
        diff_p50_ms=statistics.median(diffs),
        diff_p25_ms=_quantile(diffs, 0.25),
        diff_p75_ms=_quantile(diffs, 0.75),
        raw_p50_ms=statistics.median(raws),
        served_p50_ms=statistics.median(serveds),
        served_p99_ms=_quantile(serveds, 0.99),
        served_mean_ms=statistics.fmean(serveds),
        raw_cpu_ms=1000 * raw_cpu_s / rounds,
        served_cpu_ms=spent,
    )


@contextlib.asynccontextmanager
async def http_served(url: str) -> AsyncIterator[Served]:
    """One multipart POST per call to `url` (a predict endpoint) on one keep-alive
    connection, by `PlainHttp`."""
    async with PlainHttp(url) as plain:

        async def call(index: int, data: bytes) -> None:
            status, answer = await plain.predict(f"frame_{index:03d}.jpg", data)
            if status != 200 or not json.loads(answer).get("success"):
                raise RuntimeError(f"served call failed: {status} {answer[:300]!r}")

        yield call


async def client_costs(base_url: str, rounds: int = 200) -> tuple[float, float]:
    """Median round trip (ms) of `GET /health/live` through httpx and through
    `PlainHttp`, alternating: what the choice of client adds to a served call."""
    by_httpx: list[float] = []
    by_plain: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client, PlainHttp(base_url) as plain:
        for _ in range(rounds):
            t0 = time.perf_counter()
            (await client.get(f"{base_url}/health/live")).raise_for_status()
            t1 = time.perf_counter()
            if await plain.get("/health/live") != 200:
                raise RuntimeError("GET /health/live failed")
            t2 = time.perf_counter()
            by_httpx.append((t1 - t0) * 1000)
            by_plain.append((t2 - t1) * 1000)
    return statistics.median(by_httpx), statistics.median(by_plain)


async def _main(args: argparse.Namespace) -> None:
    from bench.processes import MODEL
    from bench.raw_engine import sample_jpegs
    from engines.detector import load_detector
    from engines.repository import ModelRepository

    detector = load_detector(ModelRepository(args.repository).spec(args.model))
    jpegs = sample_jpegs(32)
    url = f"{args.url}/models/{args.model or MODEL}/predict"
    pids = {"bridge": [args.pid]} if args.pid else None
    async with http_served(url) as served:
        result = await pairs(detector, jpegs, served, args.rounds, pids=pids)
    print(result.text(), flush=True)
    by_httpx, by_plain = await client_costs(args.url)
    print(f"GET /health/live p50: httpx {by_httpx:.2f} ms, plain {by_plain:.2f} ms", flush=True)


def main() -> None:
    from bench.processes import MODEL

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:4343", help="a running bridge")
    parser.add_argument("--repository", default="models", help="for the raw engine")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--pid", type=int, help="the bridge's process id: measure its CPU too")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
