"""Benchmark 7: PostgreSQL with one replica and with three, beside SQLite.

One throwaway PostgreSQL cluster with PostgreSQL's durable settings (fsync,
synchronous_commit and full_page_writes on: tests/postgres_server.py with `durable=True`)
serves a new database for every measured run. Three setups take turns, round after round:

- SQLite: one `nudge serve` (or one `nudge worker`) on a SQLite file, as benchmarks 1 to 6;
- PostgreSQL x1: the same, on PostgreSQL;
- PostgreSQL x3: three replicas on one database, each with its own config file, port and
  metrics folder, as the README's "Running several replicas" runs them.

Ingest: the load generator of benchmarks 1 and 2 (`CLIENTS` keep-alive connections, spread
round-robin over the replicas) sends a fixed number of POSTs of 1,000 alerts (40,000 alerts),
then of 1 alert (4,000), to the same running setup; after each load the journal is polled
until every accepted alert is decided. A fixed volume, not a fixed time: every setup does
the same work, and the deciders' catching up after a fast receiver stays bounded. Sending is
held off (the SMTP URL points at a relay that accepts connections and never answers), so
what is measured is the webhook's accept and the deciders' work, not the senders'; delivery
is measured on its own below. Reported: alerts answered 200 per second (first POST to last
200), alerts decided per second (first POST to last decision), CPU per alert from the first
POST to the last decision, of all Nudge processes (supervisors, gunicorn masters and
workers, delivery workers and the sender processes they start; harness.CpuMeter, which also
counts processes that exited once reaped) and, apart, of the PostgreSQL server (the
postmaster's tree, exited backends included); and alerts per decider
transaction (decisions per distinct `created_at`: a batch stamps all its decisions alike).

Delivery: a queue of `replica_emails` deliveries is filled through the store API
(benchmarks/prefill.py: Nudge's own journal and decider) with its due time an hour ahead; the
`nudge worker` processes are started and, once every one has logged that it is running, the
queue is made due 0.5 s later (one UPDATE of next_attempt_at, which wakes the dispatchers as
any commit to the queue does), so that start-up is not measured and the workers start
together. They drain it to the SMTP sink, 20 ms per SMTP command as in benchmark 3, with
`CONNECTIONS` SMTP connections in all (12 for one worker, 4 each for three: the relay's
latency allows the same rate, 200 emails/s, to both). Rate from the first email accepted by
the sink to the last; CPU per email of the workers (each one's process tree), and apart of
the PostgreSQL server, from the due time to the last email, and the transactions the
database committed per email (claims, outcome writes and lease renewals are one each; read
from pg_stat_database once the workers have stopped). A fourth delivery setup, one
replica whose worker sends from 3 processes of 4 connections each, runs as many sending
processes as the three replicas: CPU per email grows with the processes that share these
cores, replicas or not, and that figure (no target) shows how much of the growth is left
for the replicas themselves. Ingest has its like: one replica with 6 receiver workers, as
many as the three replicas run together.

The scale-out figures: on a 2-core machine three replicas cannot beat one, so the targets
are that three reach at least 0.8 of one's throughput (claims by three processes on one
queue and journal do not collapse it) and that CPU per alert and per email does not grow
with the number of replicas (at most 1.2 times one replica's).
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.store import is_postgres, open_store
from benchmarks.delivery import rate as sink_rate
from benchmarks.harness import (
    CpuMeter,
    Figure,
    Nudge,
    Result,
    SmtpSink,
    loadgen,
    nudge_config,
    wait_until,
)
from benchmarks.prefill import prefill
from benchmarks.sizes import Sizes

CLIENTS = 6  # load-generator connections: 6 on one replica, 2 on each of three
CONNECTIONS = 12  # SMTP connections in all: 12 for one process, 4 each for three
SQLITE, PG1, PG3 = "SQLite", "PostgreSQL x1", "PostgreSQL x3"
SETUPS = ((SQLITE, 1), (PG1, 1), (PG3, 3))
# Delivery only: one replica whose worker sends from 3 processes of 4 connections each, as
# many sending processes as the three replicas run together. CPU per email grows with the
# processes sharing these 2 cores, replicas or not; this setup tells the two apart.
PG1_3 = "PostgreSQL x1, 3 sender processes"
DRAIN_SETUPS = (*SETUPS, (PG1_3, 1))
# Ingest only, for the same reason: one replica with as many receiver workers as the three
# replicas run together (2 each, the default on 2 cores).
PG1_6 = "PostgreSQL x1, 6 receiver workers"
INGEST_SETUPS = (*SETUPS, (PG1_6, 1))
DECIDE_TIMEOUT = 600.0
LATENCY = 0.02  # SMTP relay, seconds per command
HELD_OFF = 3600.0  # seconds the senders wait for the relay that never answers
DUE_DELAY = 0.5  # seconds from waking the idle workers to the queue falling due


@dataclass
class Ingest:
    accepted_rate: float  # alerts answered 200 per second, first POST -> last 200
    decided_rate: float  # alerts decided per second, first POST -> last decision
    batches: int  # decider transactions (distinct created_at among the decisions)
    accepted: int  # alerts answered 200
    decided: int  # decisions recorded
    errors: int  # POSTs not answered 200
    decided_after: float  # last 200 -> every accepted alert decided, seconds
    nudge_cpu: float  # CPU seconds, all Nudge processes, first POST -> last decision
    pg_cpu: float  # CPU seconds, PostgreSQL server, same period
    split: list[float] = field(default_factory=list)  # Nudge CPU seconds per replica


@dataclass
class Drain:
    rate: float  # emails per second at the sink, first to last
    emails: int  # emails accepted by the sink for this run
    distinct: int  # distinct recipients among them
    nudge_cpu: float  # CPU seconds of the workers, due time -> last email
    pg_cpu: float
    split: list[float] = field(default_factory=list)  # per worker
    transactions: int = 0  # PostgreSQL: transactions committed in the database, same period


class Blackhole:
    """An SMTP relay that accepts connections (the kernel completes them) and never answers:
    the senders wait for its greeting, so nothing is sent while ingest is measured."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        port = self.sock.getsockname()[1]
        self.url = f"smtp://127.0.0.1:{port}?timeout={HELD_OFF:g}"

    def close(self) -> None:
        self.sock.close()  # waiting connections are reset: the senders give up at once


class Cluster:
    """The throwaway PostgreSQL cluster (durable settings) and its server processes' CPU."""

    def __init__(self):
        from tests.postgres_server import PostgresServer

        self.server = PostgresServer()  # RuntimeError when there are no server binaries
        try:
            self.server.init(durable=True).start()
            self.server.wait_ready()
        except BaseException:
            self.server.destroy()
            raise

    def database(self) -> str:
        return self.server.create_database()

    def checkpoint(self) -> None:
        """Flush what earlier runs left, so no run pays for another's checkpoint."""
        import psycopg

        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def meter(self) -> CpuMeter:
        pid = int((self.server.data / "postmaster.pid").read_text().split()[0])
        return CpuMeter(pid).start()

    def destroy(self) -> None:
        self.server.destroy()


def _meter_total(meter: CpuMeter | None) -> float:
    return sum(meter.stop().values()) if meter is not None else 0.0


def start_fleet(folder: Path, database: str | Path, smtp_url: str, replicas: int,
                command: str, processes: int = 1, workers: int | None = None) -> list[Nudge]:
    """`replicas` processes (`nudge serve` or `nudge worker`) on one database, each with its own
    folder (config file, metrics folder, outbox, log), started at once; each sends from
    `processes` processes (delivery.processes) and, given `workers`, receives with that many
    receiver workers (server.workers; else the default)."""
    fleet = []
    for n in range(replicas):
        sub = folder / f"replica{n}"
        sub.mkdir(parents=True)
        config = nudge_config(sub, smtp_url=smtp_url, connections=CONNECTIONS // replicas,
                              workers=workers)
        config["database"] = str(database)
        # One sending process per replica in every setup: three replicas with one process per
        # core each would run six senders on this machine's two cores, and the figure is
        # about replicas, not processes (benchmark 3 measures delivery.processes).
        config["delivery"]["processes"] = processes
        if smtp_url.endswith(f"timeout={HELD_OFF:g}"):
            # Start-up refuses a lease shorter than one send can take at the URL's timeout.
            config["delivery"]["lease"] = f"{7 * HELD_OFF:g}s"
        fleet.append(Nudge(sub, config, command=command))
    try:
        for nudge in fleet:
            nudge.start(wait=False)
        for nudge in fleet:
            if command == "serve":
                nudge.wait_ready()
            else:
                wait_until(lambda n=nudge: _worker_running(n), 60, "nudge worker to start")
    except BaseException:
        stop_fleet(fleet)
        raise
    return fleet


def _worker_running(nudge: Nudge) -> bool:
    """Started, and done with its start-up check of the templates and rules (a background
    thread's, which would otherwise be measured as part of the drain)."""
    nudge.process.check_alive()
    try:
        text = nudge.process.log_path.read_text(errors="replace")
    except OSError:
        return False
    return "delivery worker started" in text and (
        "templates and rules checked" in text or "templates/rules have" in text)


def stop_fleet(fleet: list[Nudge], kill: bool = False) -> None:
    """SIGTERM every process at once, then wait for each; with `kill`, SIGKILL their process
    groups instead (measuring is over, and a graceful stop takes seconds per replica)."""
    for nudge in fleet:
        if nudge.process is not None and nudge.process.popen.poll() is None:
            if kill:
                nudge.process.kill()
            else:
                nudge.process.popen.terminate()
    for nudge in fleet:
        nudge.stop()


def _new_database(name: str, folder: Path, cluster: Cluster | None) -> str | Path:
    folder.mkdir(parents=True, exist_ok=True)
    if name == SQLITE:
        return folder / "nudge.db"
    cluster.checkpoint()
    database = cluster.database()
    store = open_store(database)
    try:
        store.migrate()
    finally:
        store.close_all()
    return database


# -- ingest -------------------------------------------------------------------------------------


def ingest_round(name: str, replicas: int, folder: Path, cluster: Cluster | None,
                 sizes: Sizes, prefix: str, workers: int | None = None) -> dict[int, Ingest]:
    """Both payload sizes against one running setup; {alerts per POST: Ingest}."""
    database = _new_database(name, folder, cluster)
    blackhole = Blackhole()
    fleet = start_fleet(folder, database, blackhole.url, replicas, "serve", workers=workers)
    store = open_store(database)
    results = {}
    try:
        for per_post, posts in sizes.replica_loads:
            if cluster is not None:
                cluster.checkpoint()
            users = f"{prefix}{per_post}"
            meters = [CpuMeter(nudge.process.pid).start() for nudge in fleet]
            pg_meter = cluster.meter() if cluster is not None else None
            got = loadgen({
                "mode": "fixed", "alerts_per_post": per_post, "posts": posts,
                "clients": CLIENTS, "urls": [nudge.url for nudge in fleet], "prefix": users,
            })
            decided_at = _wait_decided(store, database, fleet)
            split = [_meter_total(meter) for meter in meters]
            pg_cpu = _meter_total(pg_meter)
            decided, batches = scalars(
                database, "SELECT COUNT(*), COUNT(DISTINCT created_at) FROM decisions "
                f"WHERE user_id LIKE '{users}-%'")
            results[per_post] = Ingest(
                accepted_rate=got["ok_alerts"] / max(1e-9, got["last_ok"] - got["start"]),
                decided_rate=decided / max(1e-9, decided_at - got["start"]),
                batches=batches, accepted=got["ok_alerts"], decided=decided,
                errors=got["errors"], decided_after=max(0.0, decided_at - got["last_ok"]),
                nudge_cpu=sum(split), pg_cpu=pg_cpu, split=split)
    finally:
        store.close_all()
        blackhole.close()
        stop_fleet(fleet, kill=True)
    return results


def _wait_decided(store, database: str | Path, fleet: list[Nudge]) -> float:
    """Poll until no accepted notification is undecided: the time.time() it was seen.

    SQLite: the store's journal_stats (pending notifications include the journal files not
    yet loaded into the database). PostgreSQL, whose journal is the notifications table: one
    indexed EXISTS, because journal_stats counts the whole table, and 20 polls a second of
    that would add measurably to the PostgreSQL server's CPU while the deciders catch up."""
    deadline = time.monotonic() + DECIDE_TIMEOUT
    conn = None
    if is_postgres(database):
        import psycopg

        conn = psycopg.connect(str(database), autocommit=True, connect_timeout=10)
    try:
        while True:
            if conn is not None:
                (pending,) = conn.execute("SELECT EXISTS (SELECT 1 FROM notifications "
                                          "WHERE decided_at IS NULL)").fetchone()
            else:
                pending = store.journal_stats(time.time()).pending
            now = time.time()
            if not pending:
                return now
            if time.monotonic() > deadline:
                raise TimeoutError(f"notifications still undecided after {DECIDE_TIMEOUT:.0f}s")
            for nudge in fleet:
                nudge.process.check_alive()
            time.sleep(0.05)
    finally:
        if conn is not None:
            conn.close()


# -- delivery -----------------------------------------------------------------------------------


def scalars(database: str | Path, query: str) -> tuple:
    """One row of a read-only query, outside the store API (as count_rows)."""
    if is_postgres(database):
        import psycopg

        with psycopg.connect(str(database), connect_timeout=10) as conn:
            return tuple(conn.execute(query).fetchone())
    import sqlite3

    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return tuple(conn.execute(query).fetchone())
    finally:
        conn.close()


def set_due(database: str | Path, at: float) -> None:
    """Make every queued delivery due at `at` (time.time()): one UPDATE, outside the store API
    (as count_rows reads outside it), which wakes the dispatchers as any commit to the queue
    does (SQLite: a commit; PostgreSQL: the store's NOTIFY on its queue channel), so they
    reread the next due time at once."""
    query = "UPDATE deliveries SET next_attempt_at = {} WHERE status = 'queued'"
    if is_postgres(database):
        import psycopg

        from app.store.postgres import QUEUE_CHANNEL

        with psycopg.connect(str(database), connect_timeout=10) as conn:
            conn.execute(query.format("%s"), (at,))
            conn.execute(f"NOTIFY {QUEUE_CHANNEL}")
        return
    import sqlite3

    conn = sqlite3.connect(database, timeout=30)
    try:
        with conn:
            conn.execute(query.format("?"), (at,))
    finally:
        conn.close()


def drain_round(name: str, replicas: int, folder: Path, cluster: Cluster | None, sink: SmtpSink,
                count: int, prefix: str, processes: int = 1) -> Drain:
    database = _new_database(name, folder, cluster)
    config = nudge_config(folder, smtp_url=sink.url, connections=CONNECTIONS)
    config["database"] = str(database)
    prefill(config, prefix, count)
    set_due(database, time.time() + HELD_OFF)
    if cluster is not None:
        cluster.checkpoint()
    before = sink.log.refresh()
    fleet = start_fleet(folder, database, sink.url, replicas, "worker", processes)
    try:
        due = time.time() + DUE_DELAY
        set_due(database, due)
        time.sleep(max(0.0, due - 0.05 - time.time()))
        meters = [CpuMeter(nudge.process.pid).start() for nudge in fleet]
        pg_meter = cluster.meter() if cluster is not None else None
        committed = committed_transactions(database)
        sink.wait_for(before + count, timeout=120 + count * 0.1,
                      others=[nudge.process for nudge in fleet])
        split = [_meter_total(meter) for meter in meters]
        pg_cpu = _meter_total(pg_meter)
    finally:
        stop_fleet(fleet)
    # Read once the workers' connections are closed: a busy connection reports its counts at
    # most once a second, and all of them when it ends.
    transactions = committed_transactions(database) - committed
    sink.log.refresh()
    rate, emails = sink_rate(sink, prefix)
    distinct = len({rcpt for _t, _id, rcpt in sink.log.accepted if rcpt.startswith(prefix)})
    return Drain(rate=rate, emails=emails, distinct=distinct, nudge_cpu=sum(split),
                 pg_cpu=pg_cpu, split=split, transactions=transactions)


def committed_transactions(database: str | Path) -> int:
    """PostgreSQL: transactions committed in this database so far (pg_stat_database; each
    single statement in autocommit is one; this query's own counts too, one per call).
    SQLite: 0, it keeps no such count."""
    if not is_postgres(database):
        return 0
    # The statistics are read once per transaction: a connection of its own, each time.
    (count,) = scalars(database, "SELECT xact_commit FROM pg_stat_database "
                                 "WHERE datname = current_database()")
    return int(count)


# -- the benchmark ------------------------------------------------------------------------------


def run(number: int, sizes: Sizes, workdir: Path) -> Result:
    started = time.monotonic()
    result = Result(number, "PostgreSQL: 1 replica vs 3, beside SQLite (ingest and delivery)")
    try:
        import psycopg  # noqa: F401 - the PostgreSQL driver, nudge[postgres]
    except ImportError:
        result.skipped = "the PostgreSQL driver is not installed: pip install 'nudge[postgres]'"
        result.seconds = time.monotonic() - started
        return result
    try:
        cluster = Cluster()
    except RuntimeError as exc:
        result.skipped = f"no PostgreSQL server to run: {exc}"
        result.seconds = time.monotonic() - started
        return result
    ingests: dict[str, list[dict[int, Ingest]]] = {name: [] for name, _ in INGEST_SETUPS}
    drains: dict[str, list[Drain]] = {name: [] for name, _ in DRAIN_SETUPS}
    sink = None
    try:
        sink = SmtpSink(workdir, LATENCY)
        for round_ in range(sizes.replica_rounds):
            for key, (name, replicas) in enumerate(INGEST_SETUPS):
                ingests[name].append(ingest_round(
                    name, replicas, workdir / f"round{round_}" / f"ingest-{key}",
                    cluster if name != SQLITE else None, sizes, prefix=f"i{round_}{key}x",
                    workers=6 if name == PG1_6 else None))
            # A drain lasts about ten seconds, and a pause of the shared machine moves its CPU
            # per email a lot: several per round, the setups taking turns.
            for drain in range(sizes.replica_drains):
                for key, (name, replicas) in enumerate(DRAIN_SETUPS):
                    drains[name].append(drain_round(
                        name, replicas, workdir / f"round{round_}" / f"drain-{drain}-{key}",
                        cluster if name != SQLITE else None, sink, sizes.replica_emails,
                        prefix=f"d{round_}{drain}{key}x", processes=3 if name == PG1_3 else 1))
    finally:
        if sink is not None:
            sink.stop()
        cluster.destroy()

    _report_ingest(result, ingests, sizes)
    _report_drains(result, drains, sizes)
    result.seconds = time.monotonic() - started
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _report_ingest(result: Result, ingests: dict[str, list[dict[int, Ingest]]],
                   sizes: Sizes) -> None:
    for per_post, posts in sizes.replica_loads:
        runs = {name: [r[per_post] for r in rounds] for name, rounds in ingests.items()}

        def med(name: str, attribute: str, runs=runs) -> float:
            return _median([getattr(r, attribute) for r in runs[name]])

        def cpu(name: str, attribute: str = "nudge_cpu", runs=runs) -> float:
            """µs per decided alert over all rounds."""
            return 1e6 * sum(getattr(r, attribute) for r in runs[name]) / max(
                1, sum(r.decided for r in runs[name]))

        def per_batch(name: str, runs=runs) -> float:
            return sum(r.decided for r in runs[name]) / max(1, sum(r.batches for r in runs[name]))

        what = f"ingest, {per_post:,} alert{'s' if per_post > 1 else ''} per POST"
        result.figures += [
            Figure(f"{what}: PostgreSQL x3, alerts answered 200", med(PG3, "accepted_rate"),
                   "alerts/s", baseline=med(PG1, "accepted_rate"), baseline_label=PG1,
                   target=">= 0.8"),
            Figure(f"{what}: PostgreSQL x3, alerts decided", med(PG3, "decided_rate"),
                   "alerts/s", baseline=med(PG1, "decided_rate"), baseline_label=PG1,
                   target=">= 0.8"),
            Figure(f"{what}: PostgreSQL x3, CPU per alert (all Nudge processes)", cpu(PG3),
                   "µs", baseline=cpu(PG1), baseline_label=PG1, target="<= 1.2"),
            # No target: how much of the growth above is the replicas themselves.
            Figure(f"{what}: PostgreSQL x3, alerts answered 200", med(PG3, "accepted_rate"),
                   "alerts/s", baseline=med(PG1_6, "accepted_rate"),
                   baseline_label=f"{PG1_6} (as many as x3 runs)"),
            Figure(f"{what}: PostgreSQL x3, CPU per alert (all Nudge processes)", cpu(PG3),
                   "µs", baseline=cpu(PG1_6), baseline_label=f"{PG1_6} (as many as x3 runs)"),
        ]
        result.notes.append(
            f"{what}, {posts * per_post:,} alerts per run, medians: answered 200/s, decided/s; "
            f"CPU per alert, Nudge + PostgreSQL server; alerts per decider transaction: "
            + "; ".join(
                f"{name} {med(name, 'accepted_rate'):,.0f}, {med(name, 'decided_rate'):,.0f}; "
                + _us(cpu(name)) + (f" + {_us(cpu(name, 'pg_cpu'))}" if name != SQLITE else "")
                + f"; {per_batch(name):,.1f}"
                for name in runs))
        result.notes.append(
            f"{what}, every round: answered 200/s / decided/s (seconds from the last 200 to the "
            f"last decision): " + "; ".join(
                f"{name} " + ", ".join(f"{r.accepted_rate:,.0f} / {r.decided_rate:,.0f} "
                                       f"({r.decided_after:.1f}s)" for r in runs[name])
                for name in runs))
        accepted = sum(r.accepted for rs in runs.values() for r in rs)
        decided = sum(r.decided for rs in runs.values() for r in rs)
        errors = sum(r.errors for rs in runs.values() for r in rs)
        result.notes.append(
            f"{what}: {accepted:,} alerts answered 200 and {decided:,} decided over all runs"
            + (" (every accepted alert decided)" if accepted == decided else " (NOT EQUAL)")
            + f", {errors} POSTs not answered 200; Nudge CPU split over the 3 replicas: "
            + ", ".join(_shares(r.split) for r in runs[PG3]))
    result.notes.insert(0, (
        f"ingest: {CLIENTS} keep-alive load-generator connections (round-robin over the "
        f"replicas: 6 on one, 2 on each of three), 2 receiver workers per replica, sending "
        f"held off (a relay that never answers); CPU from the first POST to the last "
        f"decision; median of {sizes.replica_rounds} round(s), the setups taking turns"))


def _report_drains(result: Result, drains: dict[str, list[Drain]], sizes: Sizes) -> None:
    def med(name: str) -> float:
        return _median([r.rate for r in drains[name]])

    def cpu(name: str, attribute: str = "nudge_cpu") -> float:
        """ms per email over all rounds."""
        return 1e3 * sum(getattr(r, attribute) for r in drains[name]) / max(
            1, sum(r.emails for r in drains[name]))

    what = f"delivery, SMTP relay adding {LATENCY * 1000:.0f} ms per command"
    result.figures += [
        Figure(f"{what}: PostgreSQL x3 (3 workers)", med(PG3), "emails/s", baseline=med(PG1),
               baseline_label=f"{PG1} (1 worker)", target=">= 0.8"),
        Figure(f"{what}: PostgreSQL x3, CPU per email (all workers)", cpu(PG3), "ms",
               baseline=cpu(PG1), baseline_label=PG1, target="<= 1.2"),
        # No target: it shows how much of the growth above is the replicas themselves.
        Figure(f"{what}: PostgreSQL x3, CPU per email (all workers)", cpu(PG3), "ms",
               baseline=cpu(PG1_3), baseline_label=f"{PG1_3} (as many as x3 runs)"),
    ]
    exact = all(r.emails == sizes.replica_emails and r.distinct == r.emails
                for rs in drains.values() for r in rs)
    result.notes += [
        f"{what}, {sizes.replica_emails:,} queued emails per run, {CONNECTIONS} SMTP "
        f"connections in all ({CONNECTIONS} for one worker, {CONNECTIONS // 3} each for three; "
        f"the relay allows {CONNECTIONS / (3 * LATENCY):.0f} emails/s to either), medians: "
        f"emails/s; CPU per email, Nudge + PostgreSQL server: " + "; ".join(
            f"{name} {med(name):,.1f}; {cpu(name):.2f} ms"
            + (f" + {cpu(name, 'pg_cpu'):.2f} ms" if name != SQLITE else "")
            for name in drains),
        # Per-batch work (claims, outcome writes) is a transaction each: fewer emails per
        # process per second means smaller batches, so more of them per email.
        f"{what}: PostgreSQL transactions per email (claims, outcome writes, lease renewals; "
        f"medians): " + "; ".join(
            f"{name} {_median([r.transactions / max(1, r.emails) for r in drains[name]]):.2f}"
            for name in drains if name != SQLITE),
        f"{what}, every round, emails/s: " + "; ".join(
            f"{name} " + ", ".join(f"{r.rate:,.1f}" for r in drains[name]) for name in drains)
        + "; Nudge CPU split over the 3 workers: " + ", ".join(_shares(r.split) for r in drains[PG3])
        + ("; every email sent exactly once" if exact else
           "; NOT every email sent exactly once: " + ", ".join(
               f"{r.emails} emails, {r.distinct} recipients" for rs in drains.values()
               for r in rs)),
        "delivery: the queue prefilled through the store API, `nudge worker` processes started "
        "before it falls due; rate from the first email to the last at the sink, CPU from the "
        f"due time to the last email; {sizes.replica_drains} drain(s) of each setup per round, "
        "taking turns; CPU per email over all of them",
    ]


def _us(micros: float) -> str:
    return f"{micros:,.0f} µs" if micros < 10_000 else f"{micros / 1000:,.1f} ms"


def _shares(seconds: list[float]) -> str:
    total = sum(seconds)
    if total <= 0:
        return "no CPU measured"
    return "/".join(f"{100 * s / total:.0f}%" for s in seconds)
