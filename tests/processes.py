"""Helpers to run real `nudge` processes on loopback ports in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from demo_api.loop import free_port


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")


class NudgeProcess:
    """`nudge serve` (or another subcommand) as a real process with its own config file."""

    def __init__(self, tmp_path: Path, config: dict, *, command=("serve",), env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "nudge-serve.yml"
        config = {**config, "server": {"bind": f"127.0.0.1:{self.port}",
                                       **config.get("server", {})}}
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"nudge-{self.port}.log"
        self.command = command
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("NUDGE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        # A hung process that gets SIGABRT writes every thread's stack to its log (see stop).
        self.env["PYTHONFAULTHANDLER"] = "1"
        self.env.update(env or {})
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> NudgeProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "--config", str(self.config_path), *self.command],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        if wait_ready and self.command[0] == "serve":
            wait_until(self.ready, timeout=30, message=f"nudge serve ready; log:\n{self.output}")
        return self

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"nudge exited with {self.process.returncode}:\n{self.output}")
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Every process of the group dumps its threads' stacks (PYTHONFAULTHANDLER) and
            # dies: the failure then shows where it hung.
            for pid in [*reversed(descendants(self.process.pid)), self.process.pid]:
                try:
                    os.kill(pid, signal.SIGABRT)
                except ProcessLookupError:
                    pass
            time.sleep(2)
            self.kill_group()
            raise AssertionError(
                f"`nudge {' '.join(self.command)}` did not stop within {timeout:g}s of "
                f"{signal.Signals(sig).name}; its log:\n{self.output}") from None
        self.log.close()
        return code

    def kill_group(self) -> None:
        """SIGKILL the whole process group: the service dies without any chance to clean up."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.log.close()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
            return True
        except ProcessLookupError:
            return False


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, children first."""
    found = list(children(pid))
    for child in list(found):
        found += descendants(child)
    return found


def children(pid: int) -> dict[int, list[bytes]]:
    """The live child processes of `pid`: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found
