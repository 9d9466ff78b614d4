"""What every benchmark needs: real processes (nudge, the baseline, the SMTP sink, the load
generator), their peak memory, and the figures they report."""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from app.config import DEFAULTS
from app.store import JournalStats, Store, is_postgres, open_store
from benchmarks.smtp_sink import SinkLog
from demo_api.loop import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOKEN = "bench-token"

# What `make bench` measures Nudge with: the shipped default.
RECOMMENDED_CONNECTIONS = DEFAULTS["smtp"]["connections"]
# Nudge.wait_decided waits at least this many times as long as its last look took: the
# harness then takes at most about a ninth of a core from the decider it waits for.
POLL_COST_FACTOR = 8


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUDGE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(extra)
    return env


def http_ready(process, url: str) -> bool:
    """Whether a server answers 200 on /-/ready; raises if its process has died."""
    process.check_alive()
    try:
        return requests.get(url + "/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- machine ------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def machine_summary() -> list[str]:
    cores = os.cpu_count() or 1
    return [
        f"machine: {cores} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}",
        f"cores: Nudge, the baselines, the load generator and the SMTP server all run on these "
        f"{cores} cores and share them (no side has a core of its own)",
    ]


# -- processes ----------------------------------------------------------------------------------


class Process:
    """A child in its own session, output to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None,
                 cwd: Path = ROOT, stdout_pipe: bool = False):
        self.name = name
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env or clean_env(), start_new_session=True,
            stdout=subprocess.PIPE if stdout_pipe else self._log, stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; log: "
                               f"{self.log_path}\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_leftovers()
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)

    def _kill_leftovers(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # only our own session's processes
        except (ProcessLookupError, PermissionError):
            pass


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def process_memory(pid: int) -> tuple[str, float, float] | None:
    """(what it is, peak RSS MB, current RSS MB) from /proc, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    peak = int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
    now = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    parent = int(fields.get("PPid", "0").split()[0])
    return describe(_cmdline(pid), _cmdline(parent)), peak, now


def describe(cmdline: str, parent_cmdline: str) -> str:
    """Which Nudge process this is (gunicorn workers keep their master's command line)."""
    def receiver(line: str) -> bool:
        return any(mark in line for mark in (" receiver", "nudge-receiver", "baseline_app"))

    if receiver(cmdline):
        if receiver(parent_cmdline):
            return "receiver: gunicorn worker"
        return "receiver: gunicorn master"
    if " serve" in cmdline:
        return "nudge serve (supervisor)"
    if " worker" in cmdline:
        return "delivery worker"
    if " worker" in parent_cmdline and " serve" not in parent_cmdline:
        # A sender process the delivery worker started (delivery.processes): its work is the
        # delivery worker's, whatever command line multiprocessing gave it.
        return "delivery worker"
    return cmdline[:60]


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time of one process so far (0 when it is gone); with `reaped`, plus
    that of its children that have exited and that it has waited for (the kernel adds their
    CPU, and their own reaped children's, to the parent's cutime and cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds a process and all its descendants have used so far.

    Nudge spreads its work over processes: `nudge serve` runs a gunicorn master and workers
    and the delivery worker, and the delivery worker may start sender processes of its own
    (`delivery.processes`). Every live descendant (found by parent pid in /proc/*/stat) counts
    with its own CPU, and so does every descendant that has exited once its parent has reaped
    it (cutime/cstime), so a sender process that ends between two samples is not lost. What
    escapes: a descendant that exited but was never waited for, or whose parent had exited
    before it (it is reparented out of the tree), and, at one sample, a child reaped between
    reading its parent and reading it. Sample before stopping the process: once the root is
    gone the tree reads 0."""
    return sum(cpu_seconds(member, reaped=True) for member in descendants(pid))


class CpuMeter:
    """CPU seconds used by each process of a tree between start() and stop().

    `stop()` returns the seconds per kind of process (see `describe`); `processes` keeps them
    per process, so the split between a receiver's gunicorn workers is visible. A process
    that exits in between counts with the nearest ancestor still running, which has reaped
    it (see tree_cpu_seconds), so the sum is the whole tree's."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.before: dict[int, float] = {}
        self.parents: dict[int, int | None] = {}
        self.used: dict[str, float] = {}
        self.processes: list[tuple[str, int, float]] = []  # (what, pid, CPU seconds)

    def start(self) -> CpuMeter:
        members = descendants(self.root_pid)
        self.parents = {pid: parent_pid(pid) for pid in members}
        self.before = {pid: cpu_seconds(pid, reaped=True) for pid in members}
        return self

    def stop(self) -> dict[str, float]:
        live = {}
        for pid in descendants(self.root_pid):
            found = process_memory(pid)
            if found is not None:
                live[pid] = (found[0], cpu_seconds(pid, reaped=True))
        before = dict(self.before)
        for pid, seconds in self.before.items():
            if pid in live:
                continue
            # Gone: its CPU up to start() is now inside an ancestor's reaped CPU too.
            ancestor = self.parents.get(pid)
            while ancestor is not None and ancestor not in live:
                ancestor = self.parents.get(ancestor)
            if ancestor is not None:
                before[ancestor] = before.get(ancestor, 0.0) + seconds
        for pid, (what, now) in live.items():
            seconds = now - before.get(pid, 0.0)
            self.used[what] = self.used.get(what, 0.0) + seconds
            self.processes.append((what, pid, seconds))
        return self.used

    def split(self, what: str = "receiver: gunicorn worker") -> list[float]:
        """CPU seconds of each process of this kind, in pid order."""
        return [seconds for kind, _pid, seconds in sorted(self.processes, key=lambda p: p[1])
                if kind == what]


def split_text(seconds: list[float]) -> str:
    """'52%/48% of 11.9 CPU s' for the CPU seconds of a receiver's workers."""
    total = sum(seconds)
    if not seconds or total <= 0:
        return "no CPU measured"
    shares = "/".join(f"{100 * s / total:.0f}%" for s in seconds)
    return f"{shares} of {total:.1f} CPU s"


class SmtpSink:
    """benchmarks.smtp_sink in its own process."""

    def __init__(self, workdir: Path, latency: float, name: str = "smtp-sink",
                 pipelining: bool = True):
        self.latency = latency
        self.log = SinkLog(workdir / f"{name}.messages")
        self.process = Process(
            name,
            [PYTHON, "-m", "benchmarks.smtp_sink", "--latency", str(latency),
             "--log", str(self.log.path), *([] if pipelining else ["--no-pipelining"])],
            workdir / f"{name}.log",
            stdout_pipe=True,
        )
        line = self.process.popen.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.process.stop()
            raise RuntimeError(f"SMTP sink did not start: {line!r}\n{self.process.tail()}")
        self.port = int(line.split()[1])
        self.url = f"smtp://127.0.0.1:{self.port}"

    def wait_for(self, count: int, timeout: float, *, others=()) -> SinkLog:
        deadline = time.monotonic() + timeout
        while self.log.refresh() < count:
            for process in (self.process, *others):
                process.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.log.count} of {count} messages after {timeout:.0f}s")
            time.sleep(0.2)
        return self.log

    def stop(self) -> None:
        self.process.stop()
        self.log.refresh()


def nudge_config(workdir: Path, *, smtp_url: str | None, connections: int | None,
                 workers: int | None = None, bind: str | None = None) -> dict:
    config: dict = {
        "database": str(workdir / "nudge.db"),
        "templates_dir": str(ROOT / "email_templates"),
        "rules_dir": str(ROOT / "alert_rules"),
        "public_url": "http://127.0.0.1:8080",
        "secret_key": "bench-secret-key-of-at-least-32-bytes",
        "webhook": {"token": TOKEN},
        "smtp": {"url": smtp_url, "from": "Acme API <hello@acme.example>"},
        "delivery": {"outbox_dir": str(workdir / "outbox")},
        "metrics": {"multiproc_dir": str(workdir / "metrics")},
    }
    if connections is not None:
        config["smtp"]["connections"] = connections
    server: dict = {}
    if workers is not None:
        server["workers"] = workers
    if bind is not None:
        server["bind"] = bind
    if server:
        config["server"] = server
    return config


class Nudge:
    """`nudge serve` (or `nudge worker`) with its own config file under `workdir`."""

    def __init__(self, workdir: Path, config: dict, command: str = "serve"):
        self.workdir = workdir
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}),
                                       "bind": f"127.0.0.1:{self.port}"}}
        self.config = config
        # A SQLite file, or a PostgreSQL URL (benchmark 7)
        database = config["database"]
        self.database: Path | str = database if is_postgres(database) else Path(database)
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"nudge-{command}.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.command = command
        self.process: Process | None = None
        self._store: Store | None = None

    def start(self, timeout: float = 60, wait: bool = True) -> Nudge:
        """Start the process; for `serve`, wait until it is ready unless `wait` is false (then
        call wait_ready())."""
        self.process = Process(
            f"nudge {self.command}",
            [PYTHON, "-m", "app.cli", "--config", str(self.config_path), self.command],
            self.workdir / f"nudge-{self.command}.log",
            env=clean_env(NUDGE_LOG_LEVEL=os.environ.get("NUDGE_LOG_LEVEL", "INFO")),
        )
        if self.command == "serve" and wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(self._ready, timeout, f"nudge serve to be ready ({self.url})")

    def _ready(self) -> bool:
        return http_ready(self.process, self.url)

    def memory(self) -> list[tuple[str, int, float, float]]:
        """(what, pid, peak RSS MB, RSS MB) for every process of this Nudge."""
        rows = []
        for pid in descendants(self.process.pid):
            found = process_memory(pid)
            if found:
                rows.append((found[0], pid, found[1], found[2]))
        return rows

    @property
    def store(self) -> Store:
        """Nudge's own store API on the same database, to read the journal and the queue."""
        if self._store is None:
            self._store = open_store(self.database)
        return self._store

    def queue_depth(self) -> int:
        return self.store.queue_stats(time.time()).depth

    def journal_stats(self) -> JournalStats:
        return self.store.journal_stats(time.time())

    def wait_decided(self, timeout: float, interval: float = 0.05) -> tuple[float, JournalStats]:
        """Poll the journal until no accepted notification is left undecided, or `timeout`:
        (the time.time() it was seen empty, the last stats). The process must stay alive.

        A look counts the decided rows and scans the undecided journal: after millions of
        alerts it takes long enough that looking every `interval` would take a good part of
        a core from the decider it waits for. So it waits at least POLL_COST_FACTOR times as
        long as the last look took (the last decision is then seen a little later, a small
        error beside a decide that long)."""
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            stats = self.journal_stats()
            now = time.time()
            if stats.pending == 0 or time.monotonic() > deadline:
                return now, stats
            self.process.check_alive()
            time.sleep(max(interval, POLL_COST_FACTOR * (time.monotonic() - began)))

    def count(self, table: str, where: str = "") -> int:
        """Rows of a table (no store operation counts them): read-only, outside the store."""
        return count_rows(self.database, table, where)

    def stop(self) -> None:
        if self._store is not None:
            self._store.close_all()
            self._store = None
        if self.process:
            self.process.stop()


def count_rows(database: Path | str, table: str, where: str = "") -> int:
    if is_postgres(database):
        import psycopg

        with psycopg.connect(str(database), connect_timeout=10) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0]
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0]
    finally:
        conn.close()


class BaselineReceiver:
    """benchmarks.baseline_app: a bare Flask endpoint under Nudge's gunicorn settings; with
    `durable`, one that appends each body to that file and fdatasyncs before answering."""

    def __init__(self, workdir: Path, workers: int, durable: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = "baseline-durable" if durable else "baseline"
        metrics = workdir / f"{name}-metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        args = [PYTHON, "-m", "benchmarks.baseline_app", "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(workers)]
        if durable:
            args += ["--durable", str(durable)]
        self.process = Process(
            f"{name} receiver", args, workdir / f"{name}-receiver.log",
            env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(metrics)),
        )
        wait_until(self._ready, 60, f"the {name} receiver to be ready")

    def _ready(self) -> bool:
        return http_ready(self.process, self.url)

    def stop(self) -> None:
        self.process.stop()


def loadgen(spec: dict, timeout: float = 1800) -> dict:
    """Run benchmarks.loadgen in its own processes and return its JSON result."""
    spec = {"token": TOKEN, **spec}
    done = subprocess.run(
        [PYTHON, "-m", "benchmarks.loadgen"], input=json.dumps(spec), capture_output=True,
        text=True, cwd=ROOT, env=clean_env(), timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# -- results ------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, side by side with its baseline and target."""

    label: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""  # e.g. ">= 0.5"; compared against `ratio` unless `target_on_value`
    target_on_value: bool = False
    ratio: float | None = None
    details: list[str] = field(default_factory=list)  # printed under it, e.g. CPU per email

    def __post_init__(self):
        if self.ratio is None and self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        subject = self.value if self.target_on_value else self.ratio
        if subject is None:
            return None
        op, _, number = self.target.partition(" ")
        limit = float(number)
        return subject >= limit if op == ">=" else subject <= limit


def ratio_text(fig: Figure) -> str:
    """The ratio to two decimals, or three where two would read as the target itself while
    the verdict says otherwise (0.797 against ">= 0.8")."""
    text = f"{fig.ratio:.2f}"
    if fig.target and not fig.target_on_value and fig.met is False:
        if float(text) == float(fig.target.partition(" ")[2]):
            return f"{fig.ratio:.3f}"
    return text


@dataclass
class Result:
    number: int
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.number}. {self.title}"]
        if self.skipped:
            out.append(f"   SKIPPED: {self.skipped}")
        for fig in self.figures:
            out.append(f"   {fig.label}: {fmt(fig.value, fig.unit)}")
            if fig.baseline is not None:
                out.append(f"      baseline ({fig.baseline_label}): {fmt(fig.baseline, fig.unit)}")
            parts = []
            if fig.ratio is not None:
                parts.append(f"ratio {ratio_text(fig)}")
            if fig.target:
                verdict = {True: "MET", False: "MISSED", None: "n/a"}[fig.met]
                unit = f" {fig.unit}" if fig.target_on_value else ""
                parts.append(f"target {fig.target}{unit}: {verdict}")
            if parts:
                out.append("      " + ", ".join(parts))
            out += [f"      {detail}" for detail in fig.details]
        for note in self.notes:
            out.append(f"   - {note}")
        out.append(f"   ({self.seconds:.0f}s)")
        return out

    def as_dict(self) -> dict:
        return {
            "number": self.number, "title": self.title, "skipped": self.skipped,
            "seconds": round(self.seconds, 1), "notes": self.notes,
            "figures": [
                {"label": f.label, "value": f.value, "unit": f.unit, "baseline": f.baseline,
                 "baseline_label": f.baseline_label, "ratio": f.ratio, "target": f.target,
                 "met": f.met, "details": f.details}
                for f in self.figures
            ],
        }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.2f}"
    return f"{text} {unit}".rstrip()


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
