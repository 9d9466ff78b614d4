"""The load generator: POSTs webhook payloads from its own processes, never from the server's.

    echo '{"mode": "throughput", ...}' | python -m benchmarks.loadgen

Reads one JSON spec on stdin, prints one JSON result on stdout. Each client process keeps
one HTTP/1.1 connection alive, as Alertmanager does, and sends payloads built by
benchmarks.payloads. When the server answers `Connection: close` (Nudge's receiver does
after every 100 requests on a connection, so that a few long-lived connections spread over
all its workers) the client reconnects before its next POST, as Alertmanager's HTTP client
does: that answer is a 200 like any other, and the reconnection is part of the measured
time. A POST that fails because the server had already closed a reused connection (before
any answer) is sent again once on a fresh connection, as Go's HTTP client does. Every
result counts the connections opened, the `Connection: close` answers and those retries.

Modes:
- throughput: `clients` processes POST as fast as they are answered until `warmup +
  duration` seconds; counts alerts answered 200 within the measured window, and in all
  (with the time.time() of the last 200). With `urls` instead of `url`, the clients are
  spread round-robin over those servers (replicas).
- fixed: `posts` payloads in total, spread over `clients` processes (and over `urls`, as
  above); start/end times.
- rate: one alert per POST at a steady `rate` per second, `count` in all, from `clients`
  processes taking turns; returns the time.time() each 200 arrived, per recipient address.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import socket
import sys
import time
from urllib.parse import urlsplit

from benchmarks import payloads


class _Connection:
    """One keep-alive HTTP/1.1 connection on a plain socket, counting how often it had to be
    (re)opened.

    Not http.client: it parses every answer's headers with the email package, and the load
    generator shares the cores with the server it measures (and, in benchmark 4, stands for
    an Alertmanager that would run on a machine of its own). Here a POST is one write of
    bytes built once, and an answer is read with only what keep-alive needs: the status,
    Content-Length (or chunks) and `Connection: close`."""

    def __init__(self, url: str, token: str | None):
        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port or 80)
        head = ["POST /webhook HTTP/1.1", f"Host: {parts.netloc}",
                "Content-Type: application/json", "User-Agent: Alertmanager/0.25.0"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        self.head = ("\r\n".join(head) + "\r\nContent-Length: ").encode()
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.opened = 0  # TCP connections opened (the first one included)
        self.server_closes = 0  # answers carrying `Connection: close`
        self.retries = 0  # POSTs sent again after a reused connection turned out closed

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.opened += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buffer = b""

    def counts(self) -> dict:
        return {"connections": self.opened, "server_closes": self.server_closes,
                "retries": self.retries}

    def post(self, body: bytes) -> int:
        """The answer's status, or 0 when there was none (the connection failed)."""
        request = b"%s%d\r\n\r\n%s" % (self.head, len(body), body)
        for attempt in (1, 2):
            reused = self.sock is not None
            try:
                if self.sock is None:
                    self.connect()
                try:
                    self.sock.sendall(request)
                except (BrokenPipeError, ConnectionResetError):
                    raise _Stale from None
                status, will_close = self._answer()
            except _Stale:
                self.close()
                if reused and attempt == 1:
                    self.retries += 1
                    continue
                return 0
            except (OSError, ValueError):
                self.close()
                return 0
            if will_close:
                self.server_closes += 1
                self.close()  # a new connection for the next request
            return status
        return 0

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        return self._take(end + 2)[:-2]

    def _answer(self) -> tuple[int, bool]:
        try:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                self._fill()
        except ConnectionResetError:
            if not self.buffer:  # closed before answering: nothing was processed
                raise _Stale from None
            raise
        head = self._take(end + 4).decode("latin-1").lower().split("\r\n")
        version, status = head[0].split(" ", 2)[:2]
        fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
        fields = {name.strip(): value.strip() for name, value in fields.items()}
        will_close = version != "http/1.1" or fields.get("connection") == "close"
        if "content-length" in fields:
            self._take(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            while (size := int(self._line().split(b";")[0], 16)) > 0:
                self._take(size + 2)
            while self._line():  # trailers, then the empty line
                pass
        else:  # the body runs to the end of the connection
            will_close = True
        return int(status), will_close


class _Stale(Exception):
    """The server closed a kept-alive connection before reading this request: nothing was
    processed, so sending it again on a fresh connection is safe."""


def _url(spec: dict, client: int) -> str:
    """The server this client talks to: `url`, or the `urls` of several replicas taken
    round-robin by client number (client n keeps to urls[n % len(urls)])."""
    urls = spec.get("urls") or [spec["url"]]
    return urls[client % len(urls)]


def _throughput_client(spec: dict, client: int, start: float, results) -> None:
    per_post = spec["alerts_per_post"]
    template = payloads.template(f"{spec['prefix']}{client}", per_post)
    conn = _Connection(_url(spec, client), spec.get("token"))
    window_start = start + spec["warmup"]
    window_end = window_start + spec["duration"]
    ok_alerts = posts = errors = total_ok = total_errors = 0
    last_ok = 0.0
    latencies: list[float] = []
    seq = 0
    time.sleep(max(0.0, start - time.time()))
    while True:
        sent = time.time()
        if sent >= window_end:
            break
        status = conn.post(payloads.body(template, seq))
        seq += 1
        done = time.time()
        if status == 200:
            total_ok += per_post
            last_ok = done
        else:
            total_errors += 1
        if window_start <= done < window_end:
            posts += 1
            if status == 200:
                ok_alerts += per_post
                latencies.append(done - sent)
            else:
                errors += 1
    conn.close()
    results.put({"ok_alerts": ok_alerts, "posts": posts, "errors": errors, "latencies": latencies,
                 "total_ok": total_ok, "total_errors": total_errors, "last_ok": last_ok,
                 **conn.counts()})


def _fixed_client(spec: dict, client: int, start: float, results) -> None:
    per_post = spec["alerts_per_post"]
    template = payloads.template(spec["prefix"], per_post)
    conn = _Connection(_url(spec, client), spec.get("token"))
    ok_alerts = errors = 0
    last_ok = 0.0
    time.sleep(max(0.0, start - time.time()))
    for seq in range(client, spec["posts"], spec["clients"]):
        if conn.post(payloads.body(template, seq)) == 200:
            ok_alerts += per_post
            last_ok = time.time()
        else:
            errors += 1
    conn.close()
    results.put({"ok_alerts": ok_alerts, "errors": errors, "end": time.time(),
                 "last_ok": last_ok, **conn.counts()})


def _rate_client(spec: dict, client: int, start: float, results) -> None:
    conn = _Connection(spec["url"], spec.get("token"))
    interval = 1.0 / spec["rate"]
    answered: dict[str, float] = {}
    errors = 0
    for index in range(client, spec["count"], spec["clients"]):
        time.sleep(max(0.0, start + index * interval - time.time()))
        user = payloads.user_id(spec["prefix"], index, 0)
        body = json.dumps(payloads.notification([user]), separators=(",", ":")).encode()
        if conn.post(body) == 200:
            answered[payloads.email_for(user)] = time.time()
        else:
            errors += 1
    conn.close()
    results.put({"answered": answered, "errors": errors, **conn.counts()})


CLIENTS = {"throughput": _throughput_client, "fixed": _fixed_client, "rate": _rate_client}
COUNTS = ("connections", "server_closes", "retries")


def run(spec: dict) -> dict:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.time() + 0.5  # every client has built its payload template by then
    processes = [
        context.Process(target=CLIENTS[spec["mode"]], args=(spec, client, start, results))
        for client in range(spec["clients"])
    ]
    for process in processes:
        process.start()
    parts = []
    while len(parts) < len(processes):
        try:
            parts.append(results.get(timeout=1.0))
        except queue.Empty:
            # A client that died (its traceback is on stderr) never reports: say so rather
            # than wait for it forever.
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed or all(p.exitcode is not None for p in processes):
                for process in processes:
                    process.kill()
                raise SystemExit(f"load generator: {len(processes) - len(parts)} client "
                                 f"process(es) ended without a result (exit codes "
                                 f"{[p.exitcode for p in processes]})") from None
    for process in processes:
        process.join()
    result: dict = {"start": start, "clients": spec["clients"],
                    **{name: sum(p[name] for p in parts) for name in COUNTS}}
    if spec["mode"] == "throughput":
        latencies = sorted(x for part in parts for x in part["latencies"])
        result.update(
            ok_alerts=sum(p["ok_alerts"] for p in parts),
            total_ok_alerts=sum(p["total_ok"] for p in parts),
            total_errors=sum(p["total_errors"] for p in parts),
            last_ok=max(p["last_ok"] for p in parts),
            posts=sum(p["posts"] for p in parts),
            errors=sum(p["errors"] for p in parts),
            duration=spec["duration"],
            post_p50=latencies[len(latencies) // 2] if latencies else None,
        )
        result["alerts_per_second"] = result["ok_alerts"] / spec["duration"]
    elif spec["mode"] == "fixed":
        result.update(
            ok_alerts=sum(p["ok_alerts"] for p in parts),
            errors=sum(p["errors"] for p in parts),
            end=max(p["end"] for p in parts),
            last_ok=max(p["last_ok"] for p in parts),
        )
    else:
        answered: dict[str, float] = {}
        for part in parts:
            answered.update(part["answered"])
        result.update(answered=answered, errors=sum(p["errors"] for p in parts))
    return result


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
