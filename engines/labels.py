"""The TF Object Detection API label map (`object-detection.pbtxt`), parsed by hand.

The format is protobuf text format of `StringIntLabelMap`:
``item { id: 1 name: 'cat' display_name: 'Cat' }``. We read it ourselves so that
serving never depends on the Object Detection API package, and so that a
broken file gives a message with a line number instead of a parser trace.
"""

from __future__ import annotations

import re
from pathlib import Path

from engines.errors import InvalidModelConfig

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<punct>[{}:;,])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*|[-+]?\d+(?:\.\d*)?)
    )""",
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            line = text.count("\n", 0, pos) + 1
            raise InvalidModelConfig(f"{source}: cannot parse the label map at line {line}")
        kind = match.lastgroup or ""
        if kind != "comment":
            line = text.count("\n", 0, match.start(kind)) + 1
            tokens.append((kind, match.group(kind), line))
        pos = match.end()
    return tokens


def parse_label_map(text: str, source: str = "object-detection.pbtxt") -> dict[int, str]:
    """Map class id (1-based, as the models emit it) to the label users see.

    The label is `display_name` where present, else `name`, as the old API did.

    Raises:
        InvalidModelConfig: syntax error, an item without id or name, a duplicate
            id, or an empty map.
    """
    tokens = _tokens(text, source)
    labels: dict[int, str] = {}
    i = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal i
        if i >= len(tokens):
            raise InvalidModelConfig(f"{source}: unexpected end of the label map")
        got_kind, got, line = tokens[i]
        if got_kind != kind or (value is not None and got != value):
            wanted = value or kind
            raise InvalidModelConfig(f"{source}: line {line}: expected {wanted!r}, found {got!r}")
        i += 1
        return got

    while i < len(tokens):
        expect("word", "item")
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        line = tokens[i][2] if i < len(tokens) else 0
        expect("punct", "{")
        fields: dict[str, str] = {}
        while i < len(tokens) and tokens[i][1] != "}":
            key = expect("word")
            expect("punct", ":")
            if i >= len(tokens):
                raise InvalidModelConfig(f"{source}: unexpected end of the label map")
            kind, value, _ = tokens[i]
            i += 1
            fields[key] = _unquote(value) if kind == "string" else value
            if i < len(tokens) and tokens[i][1] in {",", ";"}:
                i += 1
        expect("punct", "}")
        labels_id = fields.get("id")
        label = fields.get("display_name") or fields.get("name")
        if labels_id is None or not re.fullmatch(r"[-+]?\d+", labels_id):
            raise InvalidModelConfig(f"{source}: line {line}: item without an integer id")
        if not label:
            raise InvalidModelConfig(f"{source}: line {line}: item without name or display_name")
        class_id = int(labels_id)
        if class_id in labels:
            raise InvalidModelConfig(f"{source}: line {line}: duplicate id {class_id}")
        labels[class_id] = label
    if not labels:
        raise InvalidModelConfig(f"{source}: the label map has no items")
    return labels


def load_label_map(path: Path) -> dict[int, str]:
    source = f"{path.parent.name}/{path.name}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidModelConfig(f"{source} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidModelConfig(f"{source} cannot be read: {exc}") from None
    return parse_label_map(text, source)
