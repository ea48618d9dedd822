"""`make demo` as a user runs it: started, watched in a real browser, stopped with Ctrl-C.

The bridge runs with an API key (TFSTREAM_API_KEY, as the k8s Deployment sets it):
the browser is sent to /login, signs in once, and the page and its event stream
then work on the session cookie, while /metrics and /health/* answer a client
without the key (Prometheus, probes) and an API call without it is refused.
The page is driven by Playwright in Debian's Chromium. It must show both
generated cameras with the boxes the shapes model finds on them (each camera
draws its own two classes, so a box on the wrong camera fails), and both must
keep updating. Ctrl-C is sent to the whole process group, as a terminal does;
afterwards no process the demo started may be left (the Kafka JVM runs in its
own session, so it is found by parentage, not by group).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.demo import demo_cameras
from deploy.local.processes import REPO_ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(600)]

API_KEY = "demo-key-for-the-browser-test"

EVERY_CAMERA_WITH_BOXES = """(count) => {
  const figs = [...document.querySelectorAll('figure.camera')];
  return figs.length >= count && figs.every(f => f.querySelector('img').naturalWidth > 0 &&
                                           f.querySelectorAll('.box').length >= 2);
}"""

SNAPSHOT = """() => Object.fromEntries([...document.querySelectorAll('figure.camera')].map(f => [
  f.dataset.camera,
  {frame: f.dataset.frame, caption: f.querySelector('figcaption').textContent,
   labels: [...f.querySelectorAll('.box')].map(b => b.dataset.label).sort(),
   inside: [...f.querySelectorAll('.box')].every(b => {
     const i = f.querySelector('img').getBoundingClientRect(), r = b.getBoundingClientRect();
     return r.width > 10 && r.left >= i.left - 1 && r.right <= i.right + 1 &&
            r.top >= i.top - 1 && r.bottom <= i.bottom + 1;
   })}]))"""


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


class Output:
    """The demo's output, read in a thread so waits are bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match.group(1)
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the demo's output:\n" + self.text())

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(10)  # the pipe ends when the last process holding it exits
        if proc.stdout is not None:
            proc.stdout.close()

    def text(self) -> str:
        return "\n".join(self.lines[-80:])


@pytest.fixture
def demo(model_repository: Path) -> Iterator[tuple[subprocess.Popen[str], Output, str]]:
    proc = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"PORT={free_port()}",
            f"MODELS={model_repository}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TFSTREAM_API_KEY": API_KEY},
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    output = Output(proc)
    try:
        url = output.wait_for(r"live page\s+(http://\S+/streams)", proc, timeout_s=360)
        yield proc, output, url
    finally:
        if proc.poll() is None:  # the test failed before Ctrl-C: leave nothing running
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        output.close(proc)


def test_make_demo_shows_both_cameras_and_ctrl_c_stops_everything(
    demo: tuple[subprocess.Popen[str], Output, str], chromium: str
) -> None:
    from playwright.sync_api import sync_playwright

    proc, output, url = demo
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            base = url.rsplit("/streams", 1)[0]
            anonymous = playwright.request.new_context()
            try:
                for open_path in ("/metrics", "/health/live", "/health/ready"):
                    assert anonymous.get(base + open_path).status == 200, open_path
                assert anonymous.get(base + "/models").status == 401
                assert anonymous.get(base + "/streams/events").status == 401
            finally:
                anonymous.dispose()
            page = browser.new_page()
            page.goto(url)
            assert page.url == base + "/login?next=/streams", page.url
            page.fill("input[name=key]", "not the key")
            page.click("button[type=submit]")
            assert "not the key" in page.inner_text("body")
            page.fill("input[name=key]", API_KEY)
            page.click("button[type=submit]")
            page.wait_for_url(url)
            cameras = demo_cameras()  # with the RTSP camera where its server is installed
            page.wait_for_function(EVERY_CAMERA_WITH_BOXES, arg=len(cameras), timeout=180_000)
            first = page.evaluate(SNAPSHOT)
            assert sorted(first) == sorted(cameras)
            # Each camera shows the classes it draws, and only those, inside its frame.
            for camera, labels in cameras.items():
                assert first[camera]["labels"] == sorted(labels), first[camera]
                assert first[camera]["inside"], first[camera]
                assert "frames/s" in first[camera]["caption"]
                assert re.search(r"latency \d+ ms", first[camera]["caption"]), first[camera]
            assert "Kafka mode" in page.inner_text("#status")
            # Both keep updating: a newer frame with its boxes, for each camera.
            page.wait_for_function(
                """(first) => [...document.querySelectorAll('figure.camera')].every(f =>
                       f.dataset.frame !== first[f.dataset.camera].frame &&
                       f.querySelectorAll('.box').length >= 2)""",
                arg=first,
                timeout=60_000,
            )
        finally:
            browser.close()

    started = descendants(proc.pid)
    assert len(started) >= 6, started  # sh/python, kafka, 2 workers, bridge, 2 streams
    port = int(url.split(":")[2].split("/")[0])
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    proc.wait(120)
    output.wait_for(r"demo: (stopped)", proc, timeout_s=5)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in started if alive(pid)}
    assert not left, f"left behind: {left}\n{output.text()}"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
