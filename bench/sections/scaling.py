"""Section 4: 1, 2 and 4 consumer processes with a simulated accelerator
(`--simulate-batch-ms`: the engine call sleeps, whatever the batch size) behind
one 8-partition topic, so that scaling is not bounded by this machine's cores;
efficiency = throughput(n) / (n x throughput(1))."""

from __future__ import annotations

from bench.context import Context
from bench.measure import replay
from bench.processes import pids, wait_balanced, worker_env
from bench.results import Row, Target
from deploy.local.processes import ConsumerProcess

PARTITIONS = 8
COUNTS = (1, 2, 4)


def row_id(consumers: int) -> str:
    return f"scaling-{consumers}"


TARGETS = [
    Target("scaling efficiency at 4 simulated consumers", row_id(4), "vs_raw", 0.9, True),
]


async def scaling(ctx: Context) -> list[Row]:
    batch_ms = ctx.args.simulate_batch_ms
    title = (
        f"4. Horizontal scaling: simulated accelerator, {batch_ms:g} ms per "
        f"engine call, max batch 8, {PARTITIONS} partitions"
    )
    print(title, flush=True)
    # INFO: the assignment log lines tell when the group has settled.
    extra = worker_env(simulate_batch_ms=batch_ms, partitions=PARTITIONS, log_level="INFO")
    procs: list[ConsumerProcess] = []
    rows: list[Row] = []
    base: float | None = None
    try:
        for n in COUNTS:
            started = [
                ConsumerProcess(ctx.bootstrap, ctx.repository, "scale", ctx.logs, extra=extra)
                for _ in range(n - len(procs))
            ]
            for proc in started:
                proc.start()
            procs += started
            for proc in started:
                proc.wait_ready(timeout_s=240)
            await wait_balanced(procs, partitions=PARTITIONS)
            ctx.measure_cpu_of(consumers=pids(procs))
            m = await ctx.bench.quietest(
                lambda n=n: replay(ctx.bench, ctx.bootstrap, "scale", ctx.folder, 32 * n, 32 * n)
            )
            base = base if base is not None else m.images_per_s
            rows.append(
                Row(
                    row_id(n),
                    title,
                    f"{n} consumer process{'es' if n > 1 else ''}, {32 * n} in flight",
                    m,
                    kind="scaling",
                    vs_raw=m.images_per_s / (n * base),
                ).show()
            )
    finally:
        for proc in procs:
            proc.stop()
    return rows
