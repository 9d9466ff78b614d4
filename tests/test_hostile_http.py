"""Hostile input over real sockets to a real `nudge serve` (gunicorn): broken HTTP framing as
well as broken JSON. Every answer is a 4xx that says what is wrong in a few words, never a 500,
and nothing a sender writes can forge a line of Nudge's log."""

from __future__ import annotations

import json
import re
import socket

import pytest
import requests

from app.log_escaping import escape_controls
from tests.conftest import TOKEN, fixture_bytes, instance_config
from tests.processes import NudgeProcess

MAX_BODY = 16384
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[\d+\] [A-Z]+ ")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    config = instance_config(folder)
    config["webhook"]["max_body_bytes"] = MAX_BODY
    nudge = NudgeProcess(folder, config).start()
    yield nudge
    nudge.stop()


def exchange(service, head: str, body: bytes = b"", *, close_write: bool = True):
    """Send a raw request (head lines without the final blank line, then body bytes), signal
    the end of what we send, and return (status code, JSON answer or None, raw answer)."""
    lines = ["POST /webhook HTTP/1.1", "Host: nudge", f"Authorization: Bearer {TOKEN}",
             "Content-Type: application/json", "Connection: close", *head.splitlines()]
    raw = ("\r\n".join(line for line in lines if line) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(raw)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    code = int(status_line.split()[1])
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        document = json.loads(payload)
    except ValueError:
        document = None
    return code, document, answer


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def valid_body() -> bytes:
    return fixture_bytes("firing-per-user.json")


def test_a_well_formed_chunked_body_is_accepted(service):
    body = valid_body()
    code, answer, _ = exchange(service, "Transfer-Encoding: chunked",
                               chunked(body[:100], body[100:]))
    assert code == 200, answer


@pytest.mark.parametrize("name, head, body", [
    ("chunk size not hex", "Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n"),
    ("chunk without its CRLF", "Transfer-Encoding: chunked", b"2\r\n{}XX3\r\n{}}\r\n0\r\n\r\n"),
    ("chunked body cut off", "Transfer-Encoding: chunked", b"100\r\n{\"version\": \"4\""),
    ("no last chunk", "Transfer-Encoding: chunked", b"2\r\n{}\r\n"),
    ("body shorter than Content-Length", "Content-Length: 500", b'{"version": "4"'),
])
def test_broken_framing_is_a_400_never_a_500(service, name, head, body):
    code, answer, raw = exchange(service, head, body)
    assert code == 400, (name, raw[:300])
    assert answer and answer["status"] == "error"


def test_a_whole_notification_followed_by_a_missing_tail_is_not_accepted(service):
    """Content-Length promised more than came: what arrived parses, but it is not what the
    sender meant to send, so it is rejected rather than journaled."""
    body = valid_body()
    code, answer, _ = exchange(service, f"Content-Length: {len(body) + 50}", body)
    assert code == 400, answer
    assert "Content-Length" in answer["error"]


def test_a_chunked_body_over_the_limit_is_413_not_a_truncated_400(service):
    body = json.dumps({"version": "4", "alerts": [], "pad": "x" * (2 * MAX_BODY)}).encode()
    code, answer, _ = exchange(service, "Transfer-Encoding: chunked",
                               chunked(*(body[i:i + 1000] for i in range(0, len(body), 1000))))
    assert code == 413, answer


@pytest.mark.parametrize("body", [
    b'{"version": "4", "receiver": "caf\xe9", "alerts": []}',  # Latin-1
    json.dumps({"version": "4", "alerts": []}).encode("utf-16"),  # valid JSON, not UTF-8
])
def test_a_body_that_is_not_utf8_is_400(service, body):
    code, answer, _ = exchange(service, f"Content-Length: {len(body)}", body)
    assert code == 400, answer
    assert "UTF-8" in answer["error"]


@pytest.mark.parametrize("body", [b"{", b"[1, 2", b"\x00" * 100, b'{"version": "4", "alerts": 7}', b"null",
                                  b"[" * 10000])
def test_malformed_json_is_400(service, body):
    code, answer, _ = exchange(service, f"Content-Length: {len(body)}", body)
    assert code == 400, answer


@pytest.mark.parametrize("field", ["version", "status"])
def test_an_error_never_echoes_more_than_a_short_prefix_of_a_bad_value(service, field):
    notification = json.loads(valid_body())
    bad = "A" * 3000
    if field == "version":
        notification["version"] = bad
    else:
        notification["alerts"][0]["status"] = bad
    body = json.dumps(notification).encode()
    code, answer, _ = exchange(service, f"Content-Length: {len(body)}", body)
    assert code == 400
    assert "AAAA" in answer["error"]  # it still shows what the value looked like
    assert len(answer["error"]) < 300
    assert "A" * 100 not in service.output


def test_control_characters_from_a_payload_cannot_forge_a_log_line(service):
    forged = "2030-01-01 00:00:00,000 [1] ERROR nudge.forged: FORGED LINE"
    rejected = json.loads(valid_body())
    rejected["alerts"][0]["status"] = f"firing\n{forged}\r{forged}"
    body = json.dumps(rejected).encode()
    assert exchange(service, f"Content-Length: {len(body)}", body)[0] == 400
    # An accepted notification whose receiver and group key are logged (a truncation warning).
    truncated = json.loads(fixture_bytes("truncated-max-alerts.json"))
    truncated["receiver"] = f"nudge\n{forged}"
    truncated["groupKey"] = f"{{}}\u2028{forged}\x1b[2J"
    body = json.dumps(truncated).encode()
    assert exchange(service, f"Content-Length: {len(body)}", body)[0] == 200
    output = service.output
    assert "FORGED LINE" in output  # the values are logged, escaped
    forged_lines = [line for line in re.split(r"\r\n|\r|\n|\u2028", output)
                    if "FORGED" in line and not LOG_LINE.match(line)]
    assert forged_lines == []
    assert not any(line.startswith("2030-01-01") for line in output.splitlines())
    assert "\x1b" not in output


def test_after_all_that_the_server_still_serves(service):
    response = requests.post(service.url + "/webhook", data=valid_body(), timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert requests.get(service.url + "/-/healthy", timeout=10).status_code == 200
    assert "Traceback" not in service.output
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert 'nudge_webhook_requests_total{code="500"}' not in metrics


def test_every_control_character_is_escaped_in_a_log_message():
    controls = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
    for code in controls:
        text = f"user=u1{chr(code)}2030-01-01 FORGED"
        escaped = escape_controls(text)
        if code == 0x09:  # a tab cannot start a line: kept
            assert escaped == text
        else:
            assert chr(code) not in escaped and "FORGED" in escaped, hex(code)
    plain = "delivery=1 rule=R user=Zoë sent to zoe@example.com"
    assert escape_controls(plain) == plain
