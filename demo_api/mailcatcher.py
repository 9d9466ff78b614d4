"""A local SMTP catcher for `make demo` and the end-to-end tests: each message to a folder."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller


class MailCatcher:
    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        if port is None:  # aiosmtpd's Controller cannot start on port 0
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.port = port
        self.controller = Controller(self, hostname=host, port=port)

    def start(self) -> MailCatcher:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd API
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._arrived:
            self.messages.append(message)
            number = len(self.messages)
            self._arrived.notify_all()
        recipient = "_".join(envelope.rcpt_tos).replace("@", "_at_").replace("/", "_")
        (self.folder / f"{number:04d}-{recipient}.eml").write_bytes(envelope.content)
        return "250 Message accepted"

    def snapshot(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(messages) is true; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: predicate(self.messages), timeout)
