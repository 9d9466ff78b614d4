"""The load generator: POSTs webhook payloads from its own processes, never from the server's.

    echo '{"mode": "throughput", ...}' | python -m benchmarks.loadgen

Reads one JSON spec on stdin, prints one JSON result on stdout. Each client process keeps
one http.client connection (reopened when the server closes it, as gunicorn's sync workers
do after every response) and sends payloads built by benchmarks.payloads.

Modes:
- throughput: `clients` processes POST as fast as they are answered until `warmup +
  duration` seconds; counts alerts answered 200 within the measured window.
- fixed: `posts` payloads in total, spread over `clients` processes; start/end times.
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


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict) -> int:
    try:
        conn.request("POST", "/webhook", body, headers)
        response = conn.getresponse()
        response.read()
        if response.will_close:
            conn.close()
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0


def _headers(spec: dict) -> dict:
    headers = {"Content-Type": "application/json", "User-Agent": "Alertmanager/0.25.0"}
    if spec.get("token"):
        headers["Authorization"] = f"Bearer {spec['token']}"
    return headers


def _throughput_client(spec: dict, client: int, start: float, results) -> None:
    per_post = spec["alerts_per_post"]
    template = payloads.template(f"{spec['prefix']}{client}", per_post)
    headers = _headers(spec)
    conn = _connection(spec["url"])
    window_start = start + spec["warmup"]
    window_end = window_start + spec["duration"]
    ok_alerts = posts = errors = total_ok = 0
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
        if window_start <= done < window_end:
            posts += 1
            if status == 200:
                ok_alerts += per_post
                latencies.append(done - sent)
            else:
                errors += 1
    conn.close()
    results.put({"ok_alerts": ok_alerts, "posts": posts, "errors": errors, "latencies": latencies,
                 "total_ok": total_ok})


def _fixed_client(spec: dict, client: int, start: float, results) -> None:
    per_post = spec["alerts_per_post"]
    template = payloads.template(spec["prefix"], per_post)
    headers = _headers(spec)
    conn = _connection(spec["url"])
    ok_alerts = errors = 0
    time.sleep(max(0.0, start - time.time()))
    for seq in range(client, spec["posts"], spec["clients"]):
        if _post(conn, payloads.body(template, seq), headers) == 200:
            ok_alerts += per_post
        else:
            errors += 1
    conn.close()
    results.put({"ok_alerts": ok_alerts, "errors": errors, "end": time.time()})


def _rate_client(spec: dict, client: int, start: float, results) -> None:
    headers = _headers(spec)
    conn = _connection(spec["url"])
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
    results.put({"answered": answered, "errors": errors})


CLIENTS = {"throughput": _throughput_client, "fixed": _fixed_client, "rate": _rate_client}


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
    result: dict = {"start": start, "clients": spec["clients"]}
    if spec["mode"] == "throughput":
        latencies = sorted(x for part in parts for x in part["latencies"])
        result.update(
            ok_alerts=sum(p["ok_alerts"] for p in parts),
            total_ok_alerts=sum(p["total_ok"] for p in parts),
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
