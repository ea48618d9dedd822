"""Section: a fixed-batch model, 1 and 2 instances.

Most TF Object Detection API exports take exactly one image per call. The
pipeline then collects one request per engine call (never a group it would
split into calls of one), and `instances` runs that many engine calls of the
model at once. This section serves `ssd_mobilenet_v2_bench_b1` (the bench
model exported with a batch fixed at 1) from the embedded bridge, 16 HTTP
clients, with `--instances 1` and `--instances 2`, and compares the throughput
with the raw engine's one-image calls of the same export, measured before and
after. The mean batch is read from the bridge's `tfstream_batch_size`
histogram: it must be 1.

On a CPU one engine call uses every core for its big operations (TensorFlow's
intra-op threads), so a second instance can only win what a one-image call and
the hand-offs around it leave idle; that ratio is what sets the CPU default of
`--instances` for fixed-batch models (2: docs/profile.md, "Instances", gives the
alternated measurement it was chosen from).
"""

from __future__ import annotations

import re

import httpx

from bench.context import Context
from bench.measure import Planned, compared, http
from bench.processes import bridge
from bench.results import Measurement, Row, Target
from engines.detector import load_detector
from engines.modelgen.generate import generate_models
from engines.repository import ModelRepository

MODEL_B1 = "ssd_mobilenet_v2_bench_b1"
#: No thresholds: the rows show what 1 and 2 instances do (and that batches are 1).
TARGETS: list[Target] = []
TITLE = "3b. Fixed-batch model: ssd_mobilenet_v2_bench_b1 (batch 1), HTTP embedded, 16 clients"


def row_id(instances: int) -> str:
    return f"fixed-b1-{instances}-instances"


def mean_batch(url: str) -> float:
    """The bridge's mean engine-call size for the fixed-batch model, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def sample(name: str) -> float:
        found = re.search(rf'^{name}\{{model="{MODEL_B1}"\}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    count = sample("tfstream_batch_size_count")
    return sample("tfstream_batch_size_sum") / count if count else float("nan")


async def fixed_batch(ctx: Context) -> list[Row]:
    generate_models(ctx.repository, [MODEL_B1])  # named only: `make run` does not serve it
    detector = load_detector(ModelRepository(ctx.repository).spec(MODEL_B1))
    rows: list[Row] = []
    for instances in (1, 2):
        with bridge(
            ctx.logs, repository=ctx.repository, models=MODEL_B1, instances=instances
        ) as local:
            assert local.proc is not None
            ctx.measure_cpu_of(with_broker=False, bridge=[local.proc.pid])
            url = local.url

            async def run(url: str = url) -> Measurement:
                m = await http(ctx.bench, url, ctx.images, 16, model=MODEL_B1)
                m.note = f"mean batch {mean_batch(url):.2f}" + (f"; {m.note}" if m.note else "")
                return m

            rows += await compared(
                ctx.bench,
                f"{TITLE}, --instances {instances}",
                detector,
                ctx.jpegs,
                [Planned(row_id(instances), f"--instances {instances}", False, run)],
                raw_prefix=f"fixed-{instances}",
            )
    return rows
