"""The load generator: POSTs webhook payloads from its own processes, never from the server's.

    echo '{"mode": "throughput", ...}' | python -m benchmarks.loadgen

Reads one JSON spec on stdin, prints one JSON result on stdout. Each client process keeps
one http.client connection alive, as Alertmanager does, and sends payloads built by
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

import http.client
import json
import multiprocessing
import sys
import time
from urllib.parse import urlsplit

from benchmarks import payloads


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection that counts how often it had to be (re)opened."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        super().__init__(parts.hostname, parts.port, timeout=120)
        self.opened = 0  # TCP connections opened (the first one included)
        self.server_closes = 0  # answers carrying `Connection: close`
        self.retries = 0  # POSTs sent again after a reused connection turned out closed

    def connect(self) -> None:
        super().connect()
        self.opened += 1

    def counts(self) -> dict:
        return {"connections": self.opened, "server_closes": self.server_closes,
                "retries": self.retries}


# The server closed a kept-alive connection before reading this request: nothing was
# processed, so sending it again on a fresh connection is safe.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _post(conn: _Connection, body: bytes, headers: dict) -> int:
    """The answer's status, or 0 when there was none (the connection failed)."""
    for attempt in (1, 2):
        reused = conn.sock is not None
        try:
            conn.request("POST", "/webhook", body, headers)
            response = conn.getresponse()
            response.read()
        except _STALE:
            conn.close()
            if reused and attempt == 1:
                conn.retries += 1
                continue
            return 0
        except (OSError, http.client.HTTPException):
            conn.close()
            return 0
        if response.will_close:
            conn.server_closes += 1
            conn.close()  # http.client opens a new connection for the next request
        return response.status
    return 0


def _headers(spec: dict) -> dict:
    headers = {"Content-Type": "application/json", "User-Agent": "Alertmanager/0.25.0"}
    if spec.get("token"):
        headers["Authorization"] = f"Bearer {spec['token']}"
    return headers


def _url(spec: dict, client: int) -> str:
    """The server this client talks to: `url`, or the `urls` of several replicas taken
    round-robin by client number (client n keeps to urls[n % len(urls)])."""
    urls = spec.get("urls") or [spec["url"]]
    return urls[client % len(urls)]


def _throughput_client(spec: dict, client: int, start: float, results) -> None:
    per_post = spec["alerts_per_post"]
    template = payloads.template(f"{spec['prefix']}{client}", per_post)
    headers = _headers(spec)
    conn = _Connection(_url(spec, client))
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
        status = _post(conn, payloads.body(template, seq), headers)
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
    headers = _headers(spec)
    conn = _Connection(_url(spec, client))
    ok_alerts = errors = 0
    last_ok = 0.0
    time.sleep(max(0.0, start - time.time()))
    for seq in range(client, spec["posts"], spec["clients"]):
        if _post(conn, payloads.body(template, seq), headers) == 200:
            ok_alerts += per_post
            last_ok = time.time()
        else:
            errors += 1
    conn.close()
    results.put({"ok_alerts": ok_alerts, "errors": errors, "end": time.time(),
                 "last_ok": last_ok, **conn.counts()})


def _rate_client(spec: dict, client: int, start: float, results) -> None:
    headers = _headers(spec)
    conn = _Connection(spec["url"])
    interval = 1.0 / spec["rate"]
    answered: dict[str, float] = {}
    errors = 0
    for index in range(client, spec["count"], spec["clients"]):
        time.sleep(max(0.0, start + index * interval - time.time()))
        user = payloads.user_id(spec["prefix"], index, 0)
        body = json.dumps(payloads.notification([user]), separators=(",", ":")).encode()
        if _post(conn, body, headers) == 200:
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
    parts = [results.get() for _ in processes]
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
