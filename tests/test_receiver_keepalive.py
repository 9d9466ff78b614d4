"""Keep-alive connections to a real `nudge serve` with one receiver process: served whether the
next request follows at once, comes later, or arrives in the same packet as the one before;
and connections that idle never hold the threads a new connection needs
(app/receiver_worker.py lets a thread wait a moment for its connection's next request)."""

from __future__ import annotations

import socket
import time

import pytest

from app import RECEIVER_THREADS
from app.receiver_worker import LINGER
from tests.conftest import TOKEN, fixture_bytes, instance_config
from tests.processes import NudgeProcess


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keepalive")
    config = instance_config(folder)
    config["server"] = {"workers": 1}  # every connection on one process and its threads
    nudge = NudgeProcess(folder, config).start()
    yield nudge
    nudge.stop()


def request() -> bytes:
    body = fixture_bytes("firing-per-user.json")
    head = ["POST /webhook HTTP/1.1", "Host: nudge", f"Authorization: Bearer {TOKEN}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Connection:
    """One raw keep-alive connection: what it sent is answered on it, in order."""

    def __init__(self, service):
        self.sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        self.buffer = b""

    def send(self, count: int = 1) -> None:
        self.sock.sendall(request() * count)

    def answer(self) -> tuple[int, bytes]:
        """(status, headers) of the next answer, its body read past."""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(self.buffer) < length:
            self._read()
        self.buffer = self.buffer[length:]
        return int(head.split()[1]), head

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed a kept-alive connection"
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def test_back_to_back_requests_on_one_connection_are_all_answered(service):
    conn = Connection(service)
    try:
        for _ in range(30):
            conn.send()
            status, head = conn.answer()
            assert status == 200
            assert b"connection: close" not in head.lower()
    finally:
        conn.close()


def test_requests_arriving_in_one_packet_are_each_answered(service):
    conn = Connection(service)
    try:
        conn.send(3)
        assert [conn.answer()[0] for _ in range(3)] == [200, 200, 200]
        conn.send()  # and the connection goes on
        assert conn.answer()[0] == 200
    finally:
        conn.close()


def test_a_connection_idle_longer_than_the_wait_is_served_when_it_comes_back(service):
    conn = Connection(service)
    try:
        conn.send()
        assert conn.answer()[0] == 200
        time.sleep(LINGER * 40)
        conn.send()
        assert conn.answer()[0] == 200
    finally:
        conn.close()


def test_idle_connections_do_not_hold_the_threads_a_new_one_needs(service):
    idle = [Connection(service) for _ in range(RECEIVER_THREADS * 2)]
    try:
        for conn in idle:
            conn.send()
        for conn in idle:
            assert conn.answer()[0] == 200
        # Every thread has served one of them; now they all go quiet together.
        fresh = Connection(service)
        try:
            started = time.monotonic()
            fresh.send()
            assert fresh.answer()[0] == 200
            # A thread each of the idle connections kept would leave it waiting for the
            # keep-alive timeout (30 s); a few seconds is generous for a loaded machine.
            assert time.monotonic() - started < 5
        finally:
            fresh.close()
        for conn in idle:  # each one still works afterwards
            conn.send()
            assert conn.answer()[0] == 200
    finally:
        for conn in idle:
            conn.close()
