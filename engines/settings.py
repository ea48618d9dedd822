"""How every tfstream command reads its options: one pydantic-settings object.

Each process builds one settings object at its entry point; the command line,
then `TFSTREAM_<OPTION>` environment variables, then defaults fill it. The
same object documents itself as `--help` from the field docstrings.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

ENV_PREFIX = "TFSTREAM_"


def cli_config(prog: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        use_attribute_docstrings=True,
        cli_avoid_json=True,
        extra="ignore",
    )


S = TypeVar("S", bound=BaseSettings)


def parse_cli(
    settings_cls: type[S], argv: Sequence[str] | None = None, required: Sequence[str] = ()
) -> S:
    """Parse the command line and environment, or exit 2 with a readable message.

    `required` names options that have an empty default for other commands (the
    bridge runs without --bootstrap) but that this command cannot do without.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = CliApp.run(settings_cls, cli_args=args)
    except ValidationError as exc:
        for err in exc.errors():
            field = "-".join(str(p) for p in err["loc"]).replace("_", "-") or "options"
            print(f"error: {field}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in required:
        if not getattr(settings, name):
            option = name.replace("_", "-")
            print(f"error: --{option} (or {ENV_PREFIX}{name.upper()}) is required", file=sys.stderr)
            raise SystemExit(2)
    return settings
