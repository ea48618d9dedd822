"""The resolution a model's graph resizes its input to, so images need not be
decoded larger than that.

Sources: `input_size: [height, width]` in `config.json` or an exporter's
`metadata.yaml` size (which must agree: `engines.export_folder.model_input_size`),
else the `image_resizer` of a TF Object Detection API `pipeline.config` beside
the export (the Model Zoo ships one with every model). The OD API's protos are not
installed here, so `pipeline.config` is read with a small parser of protobuf
text format that knows nothing of the schema: it only needs the resizer block.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PIPELINE_CONFIG_FILE = "pipeline.config"


@dataclass(frozen=True)
class FixedShape:
    """`fixed_shape_resizer`: every image becomes height x width, aspect ignored."""

    height: int = 300
    width: int = 300

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the graph resizes a `width` x `height` image to."""
        return self.width, self.height


@dataclass(frozen=True)
class KeepAspectRatio:
    """`keep_aspect_ratio_resizer`: the short side becomes `min_dimension` unless
    the long side would then pass `max_dimension`; then the long side becomes
    `max_dimension` (the OD API's `resize_to_range`). Defaults are the proto's."""

    min_dimension: int = 600
    max_dimension: int = 1024

    def target(self, width: int, height: int) -> tuple[int, int]:
        scale = self.min_dimension / min(width, height)
        if round(max(width, height) * scale) > self.max_dimension:
            scale = self.max_dimension / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class Letterbox:
    """Ultralytics' letterbox into height x width: the image is scaled to fit,
    aspect kept, then padded (engines/yolo.py); only the scaled size matters here."""

    height: int = 640
    width: int = 640

    def target(self, width: int, height: int) -> tuple[int, int]:
        gain = min(self.height / height, self.width / width)
        return max(1, round(width * gain)), max(1, round(height * gain))


Resizer = FixedShape | KeepAspectRatio | Letterbox


class TextFormatError(ValueError):
    """A `pipeline.config` that is not protobuf text format."""


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<tok>[{}<>:;,\[\]]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s{}<>:;,\[\]"'#]+)"""
)

Message = dict[str, list["Message | str"]]


def parse_text_format(text: str) -> Message:
    """Protobuf text format as nested dicts: field name -> list of values (a
    value is a sub-message dict or the scalar's text, quotes removed).

    Raises:
        TextFormatError: unbalanced braces or a field without a value.
    """
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # pragma: no cover - the last alternative matches any other char
            raise TextFormatError(f"unexpected character at offset {position}")
        if match.group("tok") is not None:
            tokens.append(match.group("tok"))
        position = match.end()
    message, end = _message(tokens, 0, closing=None)
    if end != len(tokens):
        raise TextFormatError(f"unexpected '{tokens[end]}'")
    return message


def _message(tokens: list[str], i: int, closing: str | None) -> tuple[Message, int]:
    fields: Message = {}
    while i < len(tokens):
        token = tokens[i]
        if token in ("}", ">"):
            if token == closing:
                return fields, i + 1
            raise TextFormatError(f"unbalanced '{token}'")
        if token in (";", ","):
            i += 1
            continue
        if token in ("{", "<", "[", "]", ":"):
            raise TextFormatError(f"a field name was expected, not '{token}'")
        name, i = token, i + 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens) or tokens[i] in ("}", ">", "]", ":", ";", ","):
            raise TextFormatError(f"field '{name}' has no value")
        if tokens[i] in ("{", "<"):
            value, i = _message(tokens, i + 1, "}" if tokens[i] == "{" else ">")
            fields.setdefault(name, []).append(value)
        elif tokens[i] == "[":  # a repeated scalar's list form: [1, 2, 3]
            i += 1
            while i < len(tokens) and tokens[i] != "]":
                if tokens[i] != ",":
                    fields.setdefault(name, []).append(tokens[i].strip("\"'"))
                i += 1
            i += 1
        else:
            fields.setdefault(name, []).append(tokens[i].strip("\"'"))
            i += 1
    if closing is not None:
        raise TextFormatError(f"missing '{closing}'")
    return fields, i


def _int(block: Message, name: str, default: int) -> int:
    values = block.get(name) or [str(default)]
    value = values[-1]
    if not isinstance(value, str) or not value.isdigit() or int(value) < 1:
        raise TextFormatError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def resizer_from_pipeline(text: str) -> Resizer | None:
    """The resizer of the (only) model in a `pipeline.config`; None for the
    resizers that do not bound the image size (identity, conditional...).

    Raises:
        TextFormatError: not text format, or a resizer dimension that is not a
            positive integer.
    """
    config = parse_text_format(text)
    for model in config.get("model", []):
        if not isinstance(model, dict):
            continue
        for architecture in model.values():
            for meta in architecture:
                if not isinstance(meta, dict):
                    continue
                for resizer in meta.get("image_resizer", []):
                    if not isinstance(resizer, dict):
                        continue
                    if fixed := resizer.get("fixed_shape_resizer"):
                        block = fixed[-1] if isinstance(fixed[-1], dict) else {}
                        return FixedShape(_int(block, "height", 300), _int(block, "width", 300))
                    if keep := resizer.get("keep_aspect_ratio_resizer"):
                        block = keep[-1] if isinstance(keep[-1], dict) else {}
                        return KeepAspectRatio(
                            _int(block, "min_dimension", 600), _int(block, "max_dimension", 1024)
                        )
    return None


def read_pipeline_config(folders: list[Path]) -> Resizer | None:
    """The resizer of the first `pipeline.config` found in `folders`.

    A file that cannot be read or parsed gives None (images are then decoded at
    full resolution, as without the file) and a warning: the file is a hint
    for speed, and refusing to serve the model over it would be worse.
    """
    for folder in folders:
        path = folder / PIPELINE_CONFIG_FILE
        if not path.is_file():
            continue
        try:
            return resizer_from_pipeline(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, TextFormatError) as exc:
            log.warning(
                "pipeline.config ignored; images decode at full resolution",
                extra={"path": str(path), "error": str(exc)},
            )
            return None
    return None
