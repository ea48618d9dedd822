"""HEALTHCHECK of the tfstream image: probe the health endpoint of whichever
tfstream command the container runs, with the standard library only.

    python /opt/tfstream/healthcheck.py        (exit 0: healthy, 1: unhealthy)

What is probed:

1. `TFSTREAM_HEALTH_URL`, when set (for example http://127.0.0.1:9400/health/ready);
2. otherwise the tfstream server found among the container's processes
   (/proc/<pid>/cmdline, lowest pid first, so `docker run --init` works too):
   - `tfstream-consumer` (or `python -m consumer`): /health/live on
     `--metrics-port` / `TFSTREAM_METRICS_PORT` (default 9400); port 0 turns
     the endpoint off, so there is nothing to probe;
   - `tfstream-bridge` (or `python -m http_bridge`): /health/live on `--port` /
     `TFSTREAM_PORT` (default 4343), over HTTPS with `--https-certfile`;
   - `tfstream-cameras` (or `python -m producer_tools.cameras`): /health/live on
     `--metrics-port` / `TFSTREAM_METRICS_PORT` (default 9410);
3. any other command (`tfstream-models generate`, a shell...) has no endpoint:
   healthy.

Liveness, not readiness: Swarm replaces unhealthy containers, and a worker that
is still loading its models, or waiting for its partitions, must not be killed.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HEALTH_PATH = "/health/live"
TIMEOUT_S = 4.0


@dataclass(frozen=True)
class Server:
    """How to find one tfstream server's health endpoint."""

    command: str
    module: str
    port_option: str
    host_option: str
    default_port: int
    tls_option: str = ""
    """Set, it makes the server speak HTTPS (the bridge's --https-certfile)."""


SERVERS = (
    Server("tfstream-consumer", "consumer", "metrics-port", "metrics-host", 9400),
    Server("tfstream-bridge", "http_bridge", "port", "host", 4343, "https-certfile"),
    Server("tfstream-cameras", "producer_tools.cameras", "metrics-port", "metrics-host", 9410),
)


def _server_of(cmdline: Sequence[str]) -> tuple[Server, list[str]] | None:
    """The tfstream server a command line runs, and the arguments after it."""
    for i, arg in enumerate(cmdline):
        for server in SERVERS:
            if os.path.basename(arg) == server.command:
                return server, list(cmdline[i + 1 :])
            if arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == server.module:
                return server, list(cmdline[i + 2 :])
    return None


def _option(args: Sequence[str], name: str) -> str | None:
    """The last value given to --name (as `--name VALUE` or `--name=VALUE`)."""
    value = None
    spellings = {f"--{name}", f"--{name.replace('-', '_')}"}
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        if flag in spellings:
            if eq:
                value = inline
            elif i + 1 < len(args):
                value = args[i + 1]
    return value


def _setting(args: Sequence[str], environ: Mapping[str, str], name: str) -> str | None:
    """Command line first, then TFSTREAM_<OPTION>: the order the CLIs use."""
    value = _option(args, name)
    if value is None:
        value = environ.get("TFSTREAM_" + name.upper().replace("-", "_"))
    return value


def target_url(cmdline: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The URL to probe for a process, or None when it serves no health endpoint."""
    found = _server_of(cmdline)
    if found is None:
        return None
    server, args = found
    try:
        port = int(_setting(args, environ, server.port_option) or server.default_port)
    except ValueError:  # the server refuses such a port at start-up anyway
        port = server.default_port
    if port == 0:
        return None
    host = _setting(args, environ, server.host_option) or ""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if server.tls_option and _setting(args, environ, server.tls_option) else "http"
    return f"{scheme}://{host}:{port}{HEALTH_PATH}"


def _processes(proc: Path) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of every readable process, lowest pid first."""
    found = []
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        environ: dict[str, str] = {}
        try:
            for entry in (proc / str(pid) / "environ").read_bytes().split(b"\0"):
                key, eq, value = entry.decode(errors="replace").partition("=")
                if eq:
                    environ[key] = value
        except OSError:
            environ = dict(os.environ)
        found.append((argv, environ))
    return found


def find_url(environ: Mapping[str, str], proc: Path = Path("/proc")) -> str | None:
    """TFSTREAM_HEALTH_URL, else the endpoint of the first tfstream server running."""
    explicit = environ.get("TFSTREAM_HEALTH_URL", "").strip()
    if explicit:
        return explicit
    if not proc.is_dir():
        return None
    for argv, process_env in _processes(proc):
        if _server_of(argv) is not None:
            return target_url(argv, process_env)
    return None


def probe(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    try:
        # Liveness of our own process on 127.0.0.1: its certificate names the public
        # host, so it is not verified here.
        context = ssl._create_unverified_context() if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return 200 <= response.status < 300, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(environ: Mapping[str, str] | None = None, proc: Path = Path("/proc")) -> int:
    url = find_url(os.environ if environ is None else environ, proc)
    if url is None:
        print("no tfstream health endpoint in this container: nothing to probe")
        return 0
    ok, message = probe(url)
    print(("healthy " if ok else "unhealthy ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
