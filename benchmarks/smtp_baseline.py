"""The delivery baseline: plain smtplib over N parallel persistent connections, in its own process.

    echo '{"config": {...}, "prefix": "x", "count": 500, "connections": 10, "url": "smtp://..."}' \
        | python -m benchmarks.smtp_baseline

Renders the same emails the delivery worker would send (before any timing starts), opens
`connections` SMTP connections (EHLO done), then sends every message with `sendmail`, one
thread per connection taking the next message from a shared queue. The throughput is read
at the SMTP sink, exactly as for Nudge; the JSON it prints gives the CPU seconds this
process used while sending (`cpu`: rendering and connecting excluded).
"""

from __future__ import annotations

import json
import queue
import smtplib
import sys
import threading
import time
from urllib.parse import urlsplit

from benchmarks.prefill import render_messages


def main() -> int:
    spec = json.loads(sys.stdin.read())
    messages = render_messages(spec["config"], spec["prefix"], spec["count"])
    parts = urlsplit(spec["url"])
    work: queue.Queue = queue.Queue()
    for message in messages:
        work.put(message)
    clients = []
    for _ in range(spec["connections"]):
        client = smtplib.SMTP(parts.hostname, parts.port, local_hostname="baseline.bench")
        client.ehlo()
        clients.append(client)

    def send(client: smtplib.SMTP) -> None:
        while True:
            try:
                sender, recipient, wire = work.get_nowait()
            except queue.Empty:
                return
            client.sendmail(sender, [recipient], wire)

    started = time.time()
    cpu_started = time.process_time()  # this process's CPU, every thread: sending only
    threads = [threading.Thread(target=send, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished = time.time()
    cpu = time.process_time() - cpu_started
    for client in clients:
        client.quit()
    print(json.dumps({"start": started, "end": finished, "sent": len(messages), "cpu": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
