"""Generate the demo and benchmark models into a model repository, atomically.

Each model is built in a hidden temporary folder next to its target
(``.<name>.tmp-<random>``, a name the repository does not list) and renamed
into place only when complete, so an interrupted run never leaves half a model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from engines.export_folder import CONFIG_FILE, LABEL_MAP_FILE
from engines.metadata import metadata_path
from engines.modelgen import export, exporter_layouts, model_garden
from engines.repository import FROZEN_GRAPH_FILE, SAVED_MODEL_FILE
from engines.resizer import PIPELINE_CONFIG_FILE

log = logging.getLogger(__name__)

#: Exported by Model Garden's own exporter: needs Model Garden installed (a dev dependency).
#: Random weights: they exist to test the Model Garden output convention, find nothing
#: useful, so they are generated only when named (the tests' own repository does).
MODEL_GARDEN_EXPORTERS: dict[str, Callable[[Path], Path]] = {
    "retinanet_mg_pixels": lambda d: model_garden.export_retinanet(d, normalized=False),
    "retinanet_mg_normalized": lambda d: model_garden.export_retinanet(d, normalized=True),
}
#: The models a newcomer can try (`make run`, `make demo`): they find the shapes drawn by
#: `tfstream-models images`, or (the SSD) exercise a real detector's cost.
DEMO_EXPORTERS: dict[str, Callable[[Path], Path]] = {
    "shapes_tf2": lambda d: export.export_shapes_tf2(d, open_batch=False),
    "shapes_tf1": export.export_shapes_tf1,
    "ssd_mobilenet_v2_bench": export.export_ssd_mobilenet_v2_bench,
}
#: The bench model's weights exported with a fixed batch of 1: the benchmark's
#: fixed-batch rows (bench/sections/fixed.py generates it when missing).
BENCH_EXPORTERS: dict[str, Callable[[Path], Path]] = {
    "ssd_mobilenet_v2_bench_b1": lambda d: export.export_ssd_mobilenet_v2_bench(d, batch_size=1),
}
#: Ultralytics / KerasHub export layouts (engines/modelgen/exporter_layouts.py):
#: generated when named, for the tests.
EXPORTER_LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "yolo11_shapes_raw": lambda d: exporter_layouts.export_yolo_shapes(d, "raw"),
    "yolo11_shapes_nms": lambda d: exporter_layouts.export_yolo_shapes(d, "nms"),
    "yolo26_shapes_end2end": lambda d: exporter_layouts.export_yolo_shapes(d, "end2end"),
    "keras_hub_shapes": exporter_layouts.export_keras_hub_shapes,
    "yolo11_shapes_raw_normalized": lambda d: exporter_layouts.export_yolo_shapes(
        d, "raw", normalized=True
    ),
    "yolo11_shapes_nms_normalized": lambda d: exporter_layouts.export_yolo_shapes(
        d, "nms", normalized=True
    ),
    "yolo11_shapes_raw_b4": lambda d: exporter_layouts.export_yolo_shapes(d, "raw", batch=4),
    "keras_hub_shapes_pad": lambda d: exporter_layouts.export_keras_hub_shapes(d, "pad"),
    "keras_hub_shapes_stretch": lambda d: exporter_layouts.export_keras_hub_shapes(d, "stretch"),
    "keras_hub_shapes_xyxy": lambda d: exporter_layouts.export_keras_hub_shapes(d, "crop", "xyxy"),
}
#: Model name -> function writing the complete model folder it is given.
EXPORTERS: dict[str, Callable[[Path], Path]] = {
    **DEMO_EXPORTERS,
    **BENCH_EXPORTERS,
    **MODEL_GARDEN_EXPORTERS,
    **EXPORTER_LAYOUTS,
}
DEMO_NAMES: tuple[str, ...] = tuple(DEMO_EXPORTERS)
STALE_TEMP_S = 3600.0
"""Temporary folders older than this are leftovers of killed runs and get removed."""


def is_complete(model_dir: Path) -> bool:
    """True when `model_dir` has its config, label map and weights (a SavedModel
    at its root or, as Model Garden exports, in `saved_model/`); an
    Ultralytics / KerasHub layout has its metadata.yaml in place of the first two."""
    has_weights = (model_dir / FROZEN_GRAPH_FILE).is_file() or any(
        (folder / SAVED_MODEL_FILE).is_file() and (folder / "variables").is_dir()
        for folder in (model_dir, model_dir / "saved_model")
    )
    if metadata_path(model_dir) is not None:
        return has_weights
    return (
        (model_dir / CONFIG_FILE).is_file()
        and (model_dir / LABEL_MAP_FILE).is_file()
        and has_weights
        and _declares_input_size(model_dir)
    )


def _declares_input_size(model_dir: Path) -> bool:
    """Every generated model declares its input size; a folder from before they
    did is regenerated rather than silently decoded at full resolution.

    Model Garden exports are the exception: their exporter records the input
    size in `params.yaml`, which tfstream does not read for decoding (their
    resize pads to a square, and their tests compare served boxes with the raw
    signature on the full-resolution image), so they always decode in full."""
    if (model_dir / PIPELINE_CONFIG_FILE).is_file():
        return True
    if (model_dir / "params.yaml").is_file():
        return True
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "input_size" in config


def _remove_stale_temps(out_dir: Path, name: str) -> None:
    now = time.time()
    leftovers = [*out_dir.glob(f".{name}.tmp-*"), *out_dir.glob(f".{name}.old-*")]
    for leftover in leftovers:
        try:
            if now - leftover.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def write_atomically(target: Path, build: Callable[[Path], object], overwrite: bool) -> bool:
    """Build a model folder with `build(tmp_dir)` and rename it to `target`.

    Returns:
        False when another process put a complete `target` in place meanwhile
        (and `overwrite` is off); our copy is then discarded.
    """
    out_dir = target.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=out_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not
        build(tmp)
        if target.exists():
            if not overwrite and is_complete(target):
                return False
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=out_dir))
            target.rename(trash / target.name)
            tmp.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
            return True
        try:
            tmp.rename(target)
        except OSError:
            # Another process renamed its copy into place after our check.
            if overwrite or not is_complete(target):
                raise
            return False
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_models(
    out_dir: Path, names: Iterable[str] | None = None, overwrite: bool = False
) -> list[Path]:
    """Write the named models (default: the demo models, `DEMO_NAMES`) into `out_dir`.

    A model whose folder is already complete is skipped unless `overwrite`;
    an incomplete folder of that name is replaced. Model Garden's test exports
    are written only when named, and need Model Garden installed.

    Returns:
        The folders written by this call (skipped models are not listed).

    Raises:
        ValueError: an unknown model name (nothing is written then).
    """
    out_dir = Path(out_dir)
    selected = list(DEMO_NAMES if names is None else names)
    unknown = [name for name in selected if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown model names {unknown}; known: {list(EXPORTERS)}")
    written: list[Path] = []
    for name in dict.fromkeys(selected):
        target = out_dir / name
        if not overwrite and is_complete(target):
            log.info("model %s exists, skipped", target)
            continue
        # Past the check above, an existing folder is replaced: asked for, or incomplete.
        replace = overwrite or target.exists()
        if target.exists() and not overwrite:
            log.warning("model folder %s is incomplete: regenerating it", target)
        started = time.perf_counter()
        if write_atomically(target, EXPORTERS[name], overwrite=replace):
            log.info("generated %s in %.1fs", target, time.perf_counter() - started)
            written.append(target)
    return written
