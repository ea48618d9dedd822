"""Resident memory of one serving process over forced reloads and failed versions.

A worker that reloads its model, or is given a version that fails to load,
must end up holding one copy of the weights, not one more per event. This
loads a model through the worker's own registry and pipeline (one request
answered, so its lane exists, as in a worker that has served), then forces
`--reloads` reloads and rolls in `--failed` versions that fail after their
SavedModel loaded (their config.json sets `iou_threshold`, which the model's
convention refuses), reading the process's RSS from /proc after each, once
the garbage collector has run. The version folders hard-link the weights, so
the disk holds one copy.

    python -m bench.reload_rss --repository models --model ssd_mobilenet_v2_bench

Prints one JSON object: RSS in MiB after the first load, after each reload and
each failed version, and the growth per event over each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from consumer.pipeline import Pipeline
from consumer.protocol import Request
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines.repository import ModelRepository

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """Resident set size of this process now (MiB), after a full collection."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * _PAGE / 2**20, 1)


def _linked_copy(source: Path, dest: Path, config: dict[str, Any] | None = None) -> None:
    """`source` as `dest`, its files hard-linked; `config` replaces config.json."""
    shutil.copytree(source, dest, copy_function=os.link)
    if config is not None:
        (dest / "config.json").unlink()
        (dest / "config.json").write_text(json.dumps(config))


def _jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (128, 90, 40)).save(out, "JPEG")
    return out.getvalue()


async def measure(model_folder: Path, reloads: int, failed: int, device: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="reload-rss-") as tmp:
        root = Path(tmp)
        folder = root / "m"
        folder.mkdir()
        _linked_copy(model_folder, folder / "1")
        registry = ModelRegistry(ModelRepository(root), ["m"], device)
        entry = await asyncio.to_thread(registry.load, "m")
        if entry.error is not None:
            raise SystemExit(f"the model does not load: {entry.error.message}")
        pipeline = Pipeline(registry, EngineSettings(), "bench")
        pipeline.start()
        try:
            image = _jpeg(320, 240)
            answer = await pipeline.submit(Request(model="m", correlation_id="1", image=image))
            assert answer.error is None, answer.error
            del entry, answer
            loaded = rss_mib()
            after_reload = []
            for _ in range(reloads):
                await asyncio.to_thread(registry.load, "m", True)
                after_reload.append(rss_mib())
            config = json.loads((folder / "1" / "config.json").read_text())
            after_failed = []
            for version in range(2, 2 + failed):
                _linked_copy(folder / "1", folder / str(version), {**config, "iou_threshold": 0.5})
                refreshed = await asyncio.to_thread(registry.refresh, "m")
                assert refreshed is not None and refreshed.failed is not None
                assert refreshed.failed.version == version and refreshed.version == 1
                del refreshed
                after_failed.append(rss_mib())
        finally:
            await pipeline.close()
    reloaded_end = after_reload[-1] if after_reload else loaded
    return {
        "model": model_folder.name,
        "rss_mib_loaded": loaded,
        "rss_mib_after_each_reload": after_reload,
        "rss_mib_after_each_failed_version": after_failed,
        "growth_mib_per_reload": round((reloaded_end - loaded) / max(reloads, 1), 1),
        "growth_mib_per_failed_version": round(
            ((after_failed[-1] if after_failed else reloaded_end) - reloaded_end) / max(failed, 1),
            1,
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="ssd_mobilenet_v2_bench")
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--failed", type=int, default=5)
    parser.add_argument("--device", default="cpu", help='"cpu", "auto" or a device ("GPU:0")')
    args = parser.parse_args(argv)
    result = asyncio.run(
        measure(args.repository / args.model, args.reloads, args.failed, args.device)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
