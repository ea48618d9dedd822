"""How every tfstream command reads its options: one pydantic-settings object.

Each process builds one settings object at its entry point; the command line,
then `TFSTREAM_<OPTION>` environment variables, then defaults fill it. The
same object documents itself as `--help` from the field docstrings.

A command's settings class is composed of parts (Kafka client, Kafka TLS/SASL,
HTTP server, engine, tracing, logging), each a `SettingsPart` with a help
group title, plus the command's own options; `--help` lists each part under
its title, so what a command shows is exactly what it reads.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from argparse import SUPPRESS, ArgumentParser
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsConfigDict

ENV_PREFIX = "TFSTREAM_"

#: Every tfstream command's settings class, as "module:Class" so that this module
#: (which every command imports) depends on none of them. A `TFSTREAM_*` variable that
#: one command does not read but another does is left alone: a container image sets
#: TFSTREAM_REPOSITORY for all its commands, and one environment often serves several.
COMMAND_SETTINGS = (
    "consumer.settings:ConsumerSettings",
    "http_bridge.settings:BridgeSettings",
    "producer_tools.replay:ReplaySettings",
    "producer_tools.stream:StreamSettings",
    "producer_tools.results:ResultsSettings",
    "producer_tools.diff:DiffSettings",
    "producer_tools.cameras:CamerasSettings",
    "producer_tools.camera_zones:ZonesSettings",
    "engines.cli:ModelsSettings",
)

#: `TFSTREAM_*` variables read by something other than a command's settings.
OTHER_VARIABLES = frozenset(
    {
        "TFSTREAM_HEALTH_URL",  # deploy/healthcheck.py, the image's HEALTHCHECK
        "TFSTREAM_KAFKA_VERSION",  # deploy/local/kafka.py: the test and demo broker
        "TFSTREAM_KAFKA_LIBS",
        "TFSTREAM_KAFKA_JVM_OPTS",
        "TFSTREAM_KAFKA_CDS",
    }
)

#: argparse metavars as pydantic-settings writes them, and as people read them.
_METAVARS = {
    "str": "TEXT",
    "int": "INT",
    "float": "NUMBER",
    "Path": "PATH",
    "SecretStr": "SECRET",
    "bool": "BOOL",
}
_DEFAULT_SUFFIX = re.compile(r" ?\(default(?: factory)?: ([^()]*)\)$")


def cli_config(prog: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        use_attribute_docstrings=True,
        cli_avoid_json=True,
        extra="ignore",
    )


class SettingsPart(BaseSettings):
    """Options shared by several commands, listed in `--help` under `group_title`."""

    model_config = cli_config("tfstream")
    group_title: ClassVar[str] = ""


class LoggingSettings(SettingsPart):
    group_title: ClassVar[str] = "Logging"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """How much to log."""
    log_format: Literal["json", "text"] = "text"
    """Structured JSON lines, or plain text for a terminal."""


S = TypeVar("S", bound=BaseSettings)


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    return {ENV_PREFIX + name.upper() for name in settings_cls.model_fields}


def _all_env_names() -> set[str]:
    names = set(OTHER_VARIABLES)
    for spec in COMMAND_SETTINGS:
        module, _, cls = spec.partition(":")
        names |= env_names(getattr(importlib.import_module(module), cls))
    return names


def unknown_variables(
    settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None
) -> list[str]:
    """One message per `TFSTREAM_*` variable that no tfstream command reads, naming
    the closest one that one does: a typo in a container's environment would
    otherwise be ignored without a word, unlike a typo on the command line."""
    env = os.environ if environ is None else environ
    ours = env_names(settings_cls) | OTHER_VARIABLES
    given = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in ours)
    if not given:
        return []
    known = _all_env_names()
    # Compared without the prefix, which every candidate shares.
    words = {n.removeprefix(ENV_PREFIX): n for n in known}
    candidates = sorted(words)
    messages = []
    for name in given:
        if name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), candidates, n=1)
        hint = f"; did you mean {words[close[0]]}?" if close else ""
        messages.append(f"{name} is not a tfstream setting{hint}")
    return messages


def _help_text(text: str) -> str:
    """One default per option: the docstring's own words when it explains the default
    (empty values, computed defaults), else the value pydantic-settings appends."""
    match = _DEFAULT_SUFFIX.search(text)
    if match is None:
        return text
    own = text[: match.start()]
    value = match.group(1)
    if "default" in own.lower() or value in ("", "None") or "factory" in match.group(0):
        return own
    return text


def _metavar(metavar: str) -> str:
    if metavar.startswith("{") and metavar.endswith("}"):
        choices = [c for c in metavar[1:-1].split(",") if c != "None"]
        if len(choices) == 1:
            return _METAVARS.get(choices[0], choices[0])
        return "{" + ",".join(choices) + "}"
    return _METAVARS.get(metavar, metavar)


def _group_titles(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Field name -> help group title, from the part that declares the field."""
    renamed: Mapping[str, str] = getattr(settings_cls, "group_titles", {})
    titles: dict[str, str] = {}
    for name in settings_cls.model_fields:
        for cls in reversed(settings_cls.__mro__):
            title = getattr(cls, "group_title", "") if cls is not settings_cls else ""
            if title and name in inspect.get_annotations(cls):
                titles[name] = renamed.get(title, title)
                break
    return titles


def _grouping_add_argument(settings_cls: type[BaseSettings]) -> Callable[..., Any]:
    titles = _group_titles(settings_cls)
    groups: dict[str, Any] = {}

    def add_argument(parser: ArgumentParser, *names: str, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("help"), str) and kwargs["help"] != SUPPRESS:
            kwargs["help"] = _help_text(kwargs["help"])
        if isinstance(kwargs.get("metavar"), str):
            kwargs["metavar"] = _metavar(kwargs["metavar"])
        title = titles.get(str(kwargs.get("dest", "")))
        if title is None:
            return parser.add_argument(*names, **kwargs)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title].add_argument(*names, **kwargs)

    return add_argument


def _fail(messages: Iterable[str]) -> None:
    for message in messages:
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_cli(
    settings_cls: type[S], argv: Sequence[str] | None = None, required: Sequence[str] = ()
) -> S:
    """Parse the command line and environment, or exit 2 with a readable message.

    `required` names options that have an empty default for other commands (the
    bridge runs without --bootstrap) but that this command cannot do without.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    source = CliSettingsSource(
        settings_cls, add_argument_method=_grouping_add_argument(settings_cls)
    )
    try:
        settings = CliApp.run(settings_cls, cli_args=args, cli_settings_source=source)
    except ValidationError as exc:
        _fail(
            f"{'-'.join(str(p) for p in err['loc']).replace('_', '-') or 'options'}: {err['msg']}"
            for err in exc.errors()
        )
    unknown = unknown_variables(settings_cls)
    if unknown:
        _fail(unknown)
    for name in required:
        if not getattr(settings, name):
            option = name.replace("_", "-")
            _fail([f"--{option} (or {ENV_PREFIX}{name.upper()}) is required"])
    return settings
