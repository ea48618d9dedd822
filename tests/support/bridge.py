"""A `python -m http_bridge` child process (see deploy/local/processes.py)."""

from deploy.local.processes import BridgeProcess

__all__ = ["BridgeProcess"]
