"""What every section gets: the shared settings, the broker, the sample images."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from bench.results import Bench
from engines.detector import Detector


@dataclass
class Context:
    bench: Bench
    args: argparse.Namespace
    """The command line (section-specific options such as --simulate-batch-ms)."""
    bootstrap: str
    """The run's local Kafka broker."""
    broker_pids: list[int]
    repository: Path
    jpegs: list[bytes]
    """The sample images (640x480 JPEGs)."""
    folder: Path
    """The same images as files, for tfstream-replay."""
    logs: Path
    """Where child processes write their logs (kept when the run fails)."""
    detector: Detector
    """The bench model loaded in this process: the raw-engine reference."""

    @property
    def images(self) -> list[tuple[str, bytes]]:
        """The sample images with file names, for HTTP uploads."""
        return [(f"frame_{i:03d}.jpg", data) for i, data in enumerate(self.jpegs)]

    def measure_cpu_of(self, with_broker: bool = True, **roles: list[int]) -> None:
        """Whose CPU use the next rows report: these roles, the broker, this process."""
        broker = {"broker": self.broker_pids} if with_broker else {}
        self.bench.pids = {**roles, **broker, "bench": [os.getpid()]}
