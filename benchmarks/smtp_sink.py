"""An SMTP server in its own process that adds latency to every command and logs each message.

    python -m benchmarks.smtp_sink --latency 0.02 --log sink.log

Like tests/smtp_servers.py's SlowServer it waits `latency` seconds before handling every SMTP
command (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT): what a relay one 20 ms round trip away
costs. A message over a persistent connection therefore costs MAIL + RCPT + DATA = 3 x
latency; a fresh connection per message adds EHLO and QUIT (5 x latency).

It offers PIPELINING, as most relays do (aiosmtpd alone does not; `--no-pipelining` leaves it
out). A client that uses it writes MAIL, RCPT and DATA at once, but the sink still handles,
and delays, each command in turn: pipelining saves writes and wake-ups here, never latency.

It runs in a separate process so that its CPU time never competes for Nudge's GIL. It prints
`PORT <n>` on stdout once listening and appends one tab-separated line per event to the log:

    M <accept time.time()> <connection> <Message-ID> <first recipient>
    O <time.time()> <connection>        (connection opened)
    C <time.time()> <connection>        (connection closed)

`SinkLog` (used by the benchmarks) reads that file incrementally.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(\S+)")


def serve(host: str, port: int, latency: float, log_path: Path, pipelining: bool = True) -> None:
    from aiosmtpd.smtp import SMTP

    log = open(log_path, "a", buffering=1 << 16)  # noqa: SIM115 - lives as long as the process
    ids = itertools.count(1)

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
            session.host_name = hostname  # aiosmtpd leaves this to a handler with the hook
            if pipelining:
                return [*responses[:-1], "250-PIPELINING", responses[-1]]
            return responses

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
            content = envelope.original_content or b""
            end = content.find(b"\r\n\r\n")
            head = content if end < 0 else content[: end + 2]
            found = _MESSAGE_ID.search(head)
            message_id = found.group(1).decode("ascii", "replace") if found else "-"
            rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else "-"
            log.write(f"M\t{time.time():.6f}\t{server.sink_id}\t{message_id}\t{rcpt}\n")
            log.flush()
            return "250 2.0.0 Message accepted"

    class Session(SMTP):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sink_id = next(ids)
            if latency > 0:
                self._smtp_methods = {
                    name: self._delayed(method) for name, method in self._smtp_methods.items()
                }

        @staticmethod
        def _delayed(method):
            async def delayed(arg):
                await asyncio.sleep(latency)
                await method(arg)

            return delayed

        def connection_made(self, transport):
            super().connection_made(transport)
            log.write(f"O\t{time.time():.6f}\t{self.sink_id}\n")

        def connection_lost(self, error):
            log.write(f"C\t{time.time():.6f}\t{self.sink_id}\n")
            log.flush()
            super().connection_lost(error)

    handler = Handler()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Session(handler, hostname="sink.bench", auth_require_tls=False),
            host=host, port=port, backlog=1024,
        )
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await stopped.wait()
        server.close()
        log.flush()

    asyncio.run(main())


@dataclass
class SinkLog:
    """What the sink has logged so far; `refresh()` reads only what was appended since."""

    path: Path
    accepted: list[tuple[float, str, str]] = field(default_factory=list)  # (time, msg id, rcpt)
    connections: int = 0
    peak_open: int = 0
    _open: int = 0
    _offset: int = 0
    _partial: bytes = b""

    def refresh(self) -> int:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return len(self.accepted)
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            parts = line.decode("utf-8", "replace").split("\t")
            if parts[0] == "M":
                self.accepted.append((float(parts[1]), parts[3], parts[4]))
            elif parts[0] == "O":
                self.connections += 1
                self._open += 1
                self.peak_open = max(self.peak_open, self._open)
            elif parts[0] == "C":
                self._open -= 1
        return len(self.accepted)

    @property
    def count(self) -> int:
        return len(self.accepted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smtp_sink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per command")
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--no-pipelining", dest="pipelining", action="store_false",
                        help="do not offer PIPELINING in the EHLO reply")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.latency, args.log, args.pipelining)
    return 0


if __name__ == "__main__":
    sys.exit(main())
