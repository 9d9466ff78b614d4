"""A relay asking to slow down (421, 451 4.7.x, 454) slows the whole pool down; no message is
failed, made dead or charged an attempt for it.

The policy (app/relay_throttle.py's Pace) is tested over an explicit clock; the rest with real
parts: aiosmtpd relays that throttle, a SQLite file and the delivery worker in a thread.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prometheus_client import REGISTRY

from app import create_app
from app.config import ConfigError
from app.relay_throttle import ALONE_LIMIT, Pace, RelayThrottle, SingledOut
from app.transports import SmtpTransport, TransportError
from tests.processes import wait_until
from tests.smtp_servers import BusyServer, DeferringServer, RecordingServer, RejectingServer
from tests.test_delivery import (
    RunningWorker,
    build_config,
    deliveries,
    make_alert,
    make_payload,
    outcomes,
    post,
    wait_for_statuses,
    wait_settled,
)
from tests.test_transports import make_message, plain, send_expecting_error

# -- the policy, over an explicit clock -----------------------------------------------------


def test_a_throttled_reply_pauses_the_pool_and_halves_the_connections():
    pace = Pace(connections=8, first_backoff=1.0, max_backoff=60.0)

    assert pace.throttled(pace.episode, now=100.0) is True  # it was at full speed: log it

    assert pace.pause_left(100.0) == 1.0
    assert pace.pause_left(100.6) == pytest.approx(0.4)
    assert pace.pause_left(101.0) == 0.0
    assert pace.allowed == 4
    assert [pace.may_send(seat) for seat in range(8)] == [True] * 4 + [False] * 4


def test_repeated_throttling_doubles_the_pause_up_to_the_cap_and_keeps_one_connection():
    pace = Pace(connections=8, first_backoff=1.0, max_backoff=5.0)
    pauses, allowed = [], []
    now = 0.0
    for _ in range(5):
        pace.throttled(pace.episode, now)
        pauses.append(pace.pause_left(now))
        allowed.append(pace.allowed)
        now += 10
    assert pauses == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert allowed == [4, 2, 1, 1, 1]


def test_replies_to_sends_started_before_the_slow_down_do_not_slow_it_down_again():
    pace = Pace(connections=4)
    before = pace.episode  # four sends in flight when the relay starts throttling
    assert pace.throttled(before, now=0.0) is True
    for _ in range(3):
        assert pace.throttled(before, now=0.1) is False
    assert (pace.allowed, pace.backoff, pace.resume_at) == (2, 1.0, 1.0)
    # ...nor do their successes count towards speeding up again
    for _ in range(10):
        pace.succeeded(before)
    assert pace.allowed == 2


def test_connections_climb_back_one_at_a_time_and_the_backoff_starts_over_at_full_speed():
    pace = Pace(connections=4, first_backoff=1.0, max_backoff=60.0)
    pace.throttled(pace.episode, now=0.0)
    pace.throttled(pace.episode, now=5.0)  # throttled again under the slow-down: 1 left
    assert (pace.allowed, pace.backoff) == (1, 2.0)

    climb, recovered_after = [], None
    for n in range(1, 20):
        if pace.succeeded(pace.episode):
            recovered_after = n
            break
        climb.append(pace.allowed)
    # a full round of sends at each level: 1, then 2, 3 and 4 sends
    assert climb == [2, 2, 3, 3, 3, 4, 4, 4, 4]
    assert recovered_after == 10
    assert pace.full_speed and pace.allowed == 4

    pace.throttled(pace.episode, now=100.0)
    assert pace.pause_left(100.0) == 1.0  # starts small again


def test_the_relays_hint_is_honoured_within_bounds():
    pace = Pace(connections=2, first_backoff=1.0, max_backoff=30.0)
    pace.throttled(pace.episode, now=0.0, hint=10.0)
    assert pace.pause_left(0.0) == 10.0
    pace.throttled(pace.episode, now=100.0, hint=3600.0)
    assert pace.pause_left(100.0) == 30.0
    pace.throttled(pace.episode, now=200.0, hint=0.0)  # never shorter than our own backoff
    assert pace.pause_left(200.0) == 4.0


def test_one_connection_is_never_parked():
    pace = Pace(connections=1)
    pace.throttled(pace.episode, now=0.0)
    assert pace.allowed == 1 and pace.may_send(0)
    assert pace.succeeded(pace.episode) is True  # one send through: back to full speed


def test_the_throttle_settings_are_read_and_checked(config_data):
    config = build_config(config_data, smtp={"throttle_backoff": "2s",
                                             "throttle_max_backoff": "10m"})
    assert (config.smtp_throttle_backoff, config.smtp_throttle_max_backoff) == (2.0, 600.0)
    with pytest.raises(ConfigError) as caught:
        build_config(config_data, smtp={"throttle_backoff": "10m", "throttle_max_backoff": "1m"})
    assert caught.value.problems == [
        "defaults: smtp.throttle_max_backoff: must be at least smtp.throttle_backoff (600s), "
        "got 60s"]


def test_a_message_throttled_again_and_again_while_others_go_through_is_singled_out():
    singled_out = SingledOut(limit=3)
    # The relay throttles everyone: nothing went through in between, nobody is singled out.
    assert [singled_out.throttled(7) for _ in range(10)] == [False] * 10
    # Delivery 7 is throttled again each time after other messages went through.
    verdicts = []
    for _ in range(4):
        singled_out.sent()
        verdicts.append(singled_out.throttled(7))
    assert verdicts == [False, False, True, True]
    singled_out.sent()
    assert singled_out.throttled(8) is False  # another delivery starts with a clean slate


def test_what_is_singled_out_is_remembered_within_bounds():
    singled_out = SingledOut(limit=1, remember=2)
    for delivery_id in (1, 2, 3):
        singled_out.throttled(delivery_id)
    singled_out.sent()
    assert singled_out.throttled(1) is False  # forgotten: the oldest of three
    assert singled_out.throttled(3) is True


# -- the shared throttle, across threads ----------------------------------------------------


def test_every_sender_waits_out_the_pause_and_stop_wakes_them():
    throttle = RelayThrottle(4, first_backoff=0.3, max_backoff=1.0)
    turn = throttle.wait_turn()
    assert turn is not None  # not paused: at once

    throttle.throttled(turn, "SMTP 451 from relay: 4.7.1 Rate limit exceeded")
    started = time.monotonic()
    assert throttle.wait_turn() is not None
    assert time.monotonic() - started >= 0.25

    throttle.throttled(throttle.wait_turn(), "SMTP 421 from relay")
    waited: list[object] = []
    sender = threading.Thread(target=lambda: waited.append(throttle.wait_turn()))
    sender.start()
    time.sleep(0.05)
    throttle.stop()  # the worker is stopping: nobody sends after the pause
    sender.join(timeout=1)
    assert waited == [None]


def test_a_sender_beyond_the_allowed_connections_closes_its_connection_and_waits():
    throttle = RelayThrottle(2, first_backoff=0.05, max_backoff=1.0)
    events: list[str] = []
    seats: dict[str, int] = {}

    def sender(name: str) -> None:
        seats[name] = throttle.take_seat()
        ready.wait()
        throttle.park(lambda: events.append(f"{name} closed"))
        events.append(f"{name} sends")

    ready = threading.Event()
    first = threading.Thread(target=sender, args=("first",))
    first.start()
    while "first" not in seats:
        time.sleep(0.01)
    second = threading.Thread(target=sender, args=("second",))
    second.start()
    while "second" not in seats:
        time.sleep(0.01)
    throttle.throttled(throttle.wait_turn(), "SMTP 454 from relay: 4.7.0 Too many connections")
    assert throttle.allowed == 1
    ready.set()
    first.join(timeout=1)
    wait_until(lambda: "second closed" in events, timeout=5, message="the second parked")
    assert sorted(events) == ["first sends", "second closed"]  # seat 1 is beyond the one allowed

    turn = throttle.wait_turn()
    throttle.finished(turn)  # a round of one send: two connections allowed again
    second.join(timeout=1)
    assert events[-1] == "second sends"
    assert throttle.allowed == 2


# -- which replies mean "slow down" ---------------------------------------------------------


@pytest.mark.parametrize(
    "stage, code, text, throttled",
    [
        ("MAIL", 451, "4.7.1 Rate limit exceeded", True),
        ("RCPT", 451, "4.7.0 Too many messages, slow down", True),
        ("DATA", 451, "4.7.1 Rate limit exceeded", True),
        ("MAIL", 454, "4.7.0 Throttling failure: Maximum sending rate exceeded", True),
        ("RCPT", 421, "4.7.0 Try again later, closing connection", True),
        # on a fresh connection, an (unsolicited) 421 read as the reply to MAIL is no idle drop
        ("MAIL", 421, "4.7.0 Too many messages, closing connection", True),
        # A message's or mailbox's own temporary trouble: that message retries, counted.
        ("RCPT", 450, "4.2.1 mailbox busy", False),
        ("MAIL", 451, "4.3.0 try again later", False),
        ("DATA", 452, "4.3.1 insufficient system storage", False),
    ],
)
def test_relay_replies_asking_to_slow_down_are_throttling(stage, code, text, throttled):
    with RejectingServer(code, text, stage=stage) as relay:
        transport = SmtpTransport(plain(relay))

        error = send_expecting_error(transport, make_message())

        assert (error.throttled, error.permanent, error.setup) == (throttled, False, None)
        assert str(error).startswith(f"SMTP {code} from 127.0.0.1:{relay.port}: {text}")
        transport.close()


def test_a_421_greeting_is_throttling():
    with BusyServer(max_sessions=0) as relay:
        transport = SmtpTransport(plain(relay))

        error = send_expecting_error(transport, make_message())

        assert error.throttled and not error.permanent and error.setup is None
        assert "421" in str(error) and "Too many connections" in str(error)
        assert relay.refused == 1


def test_a_421_on_the_fresh_connection_after_an_idle_drop_is_throttling():
    # The first 421 on the reused connection reads as an idle timeout (one retry on a new
    # connection); the same answer on the new connection is the relay asking to slow down.
    with RejectingServer(421, "4.7.0 Try again later", stage="MAIL", skip=1, times=2) as relay:
        transport = SmtpTransport(plain(relay))
        transport.send(make_message(1))

        error = send_expecting_error(transport, make_message(2))

        assert error.throttled
        assert relay.rejected == 2 and relay.connections == 2
        transport.send(make_message(3))
        assert len(relay.wait_for(2)) == 2
        transport.close()


def test_a_wait_named_in_the_reply_is_passed_on():
    with RejectingServer(451, "4.7.1 Rate limit exceeded, try again in 30 seconds",
                         stage="MAIL") as relay:
        transport = SmtpTransport(plain(relay))
        error = send_expecting_error(transport, make_message())
        assert isinstance(error, TransportError) and error.retry_after == 30.0
        transport.close()


# -- the worker: nothing failed, nothing counted, the pool slowed down ------------------------


def throttled_total() -> float:
    return REGISTRY.get_sample_value("nudge_smtp_throttled_replies_total") or 0.0


def connections_allowed() -> float | None:
    return REGISTRY.get_sample_value("nudge_smtp_connections_allowed")


def queue_users(config, users, client=None) -> None:
    """Alerts for `users`, each with its address label; waits until they are queued (the
    running worker's decider may be the one to decide them). Later batches pass the client
    of the first (one app per database, as `nudge serve` runs it)."""
    client = client or create_app(config).test_client()  # creates the database
    queued = len(deliveries(config))
    alerts = [make_alert(user, labels={"email": f"{user}@example.com"}) for user in users]
    post(client, make_payload(*alerts))
    wait_until(lambda: len(deliveries(config)) == queued + len(users), timeout=10,
               message=f"{len(users)} deliveries queued")


def assert_each_sent_once_uncounted(config, relay, users) -> None:
    rows = wait_for_statuses(config, {n: "sent" for n in range(1, len(users) + 1)})
    received = relay.wait_for(len(users), timeout=30)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(f"{u}@example.com" for u in users)
    assert len({r["Message-ID"] for r in received}) == len(users)  # exactly once each
    assert [row["attempts"] for row in rows] == [1] * len(users), rows
    for row in rows:
        assert outcomes(config, row["id"]) == ["sent"]


def log_lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "nudge.throttle" and text in r.getMessage()]


def test_a_relay_rate_limiting_with_451_slows_the_whole_pool_and_every_message_goes_out_once(
    config_data, caplog
):
    caplog.set_level(logging.INFO)
    users = [f"u{n}" for n in range(16)]
    before = throttled_total()
    with RejectingServer(451, "4.7.1 Rate limit exceeded", stage="MAIL", skip=4, times=2,
                         latency=0.01) as relay:
        # max_attempts 1: were a throttled reply counted, its delivery would be dead at once
        config = build_config(config_data, smtp={
            "url": relay.url, "connections": 4, "throttle_backoff": "2s"},
            delivery={"max_attempts": 1})
        queue_users(config, users)
        with RunningWorker(config):
            assert_each_sent_once_uncounted(config, relay, users)
            wait_until(lambda: connections_allowed() == 4, timeout=10, message="full speed")

    assert relay.rejected == 2
    assert throttled_total() - before == 2
    assert [row["status"] for row in deliveries(config)] == ["sent"] * len(users)
    # The whole pool paused, not just the throttled message's connection: no connection
    # started a message during the pause (sends already under way had sent MAIL before).
    first = relay.rejected_at[0]
    during_pause = [t for t in relay.mail_times if first + 0.5 < t < first + 1.9]
    assert during_pause == []
    (slowed,) = log_lines(caplog, "asks to slow down")
    assert "451" in slowed and "Rate limit exceeded" in slowed
    assert "then sending on 2 of 4" in slowed
    assert len(log_lines(caplog, "full speed")) == 1


@pytest.mark.parametrize("stage, reply", [
    ("connect", "421 4.7.0 Too many connections, try again later"),
    # Answered on connections already open: only closing the surplus ones gets through.
    ("MAIL", "454 4.7.0 Too many connections from your host"),
])
def test_a_relay_limiting_connections_gets_fewer_and_full_speed_returns_after(
    config_data, caplog, stage, reply
):
    caplog.set_level(logging.INFO)
    first_batch = [f"a{n}" for n in range(10)]
    second_batch = [f"b{n}" for n in range(14)]
    with BusyServer(max_sessions=2, reply=reply, stage=stage, latency=0.01) as relay:
        config = build_config(config_data, smtp={
            "url": relay.url, "connections": 4, "throttle_backoff": "0.1s"},
            delivery={"max_attempts": 1})
        client = create_app(config).test_client()
        queue_users(config, first_batch, client)
        with RunningWorker(config):
            assert_each_sent_once_uncounted(config, relay, first_batch)
            assert relay.refused >= 1
            # Senders beyond the allowed connections closed theirs (idle ones within ~1 s).
            wait_until(lambda: relay.open_sessions <= connections_allowed(), timeout=5,
                       message="surplus connections closed")

            relay.heal()  # the relay's limit is raised
            queue_users(config, second_batch, client)
            assert_each_sent_once_uncounted(config, relay, first_batch + second_batch)
            wait_until(lambda: connections_allowed() == 4, timeout=10, message="full speed")
            queue_users(config, [f"c{n}" for n in range(8)], client)
            wait_until(lambda: relay.open_sessions == 4, timeout=10,
                       message="four connections open again")
            wait_settled(config, 32)

    assert [row["status"] for row in deliveries(config)] == ["sent"] * 32
    slowed = log_lines(caplog, "asks to slow down")
    code, text = reply.split(" ", 1)
    assert f"SMTP {code} from 127.0.0.1:{relay.port}: {text}" in slowed[0]
    # one line each time it slows down and each time it is back, not one per message
    assert len(slowed) == len(log_lines(caplog, "full speed")) <= relay.refused


def test_an_ordinary_temporary_failure_still_counts_an_attempt(config_data):
    # 451 4.3.0 is about this message (the relay's disk, a lookup), not about our pace.
    with RejectingServer(451, "4.3.0 try again later", stage="RCPT", times=1) as relay:
        before = throttled_total()
        config = build_config(config_data, smtp={"url": relay.url})
        queue_users(config, ["u1"])
        with RunningWorker(config):
            (row,) = wait_for_statuses(config, {1: "sent"})
    assert row["attempts"] == 2
    assert outcomes(config, 1) == ["retry", "sent"]
    assert throttled_total() == before
    assert connections_allowed() == 10  # smtp.connections: never slowed down


def test_one_message_the_relay_keeps_deferring_does_not_hold_everyone_back(config_data):
    with DeferringServer("u0@example.com", "451 4.7.1 Deferred by policy", latency=0.005) \
            as relay:
        config = build_config(config_data, smtp={
            "url": relay.url, "connections": 2, "throttle_backoff": "0.05s"},
            delivery={"max_attempts": 2, "retry_backoff": "0.05s"})
        client = create_app(config).test_client()
        queue_users(config, ["u0"], client)
        users = ["u0"]
        with RunningWorker(config):
            # Other emails keep coming, and the relay takes them all.
            deadline = time.monotonic() + 20
            while deliveries(config)[0]["status"] != "dead" and time.monotonic() < deadline:
                batch = [f"u{n}" for n in range(len(users), len(users) + 3)]
                queue_users(config, batch, client)
                users += batch
                time.sleep(0.2)
            rows = wait_settled(config, len(users))
            wait_until(lambda: connections_allowed() == 2, timeout=10, message="full speed")
    statuses = {row["user_id"]: row["status"] for row in rows}
    assert statuses == {"u0": "dead", **{u: "sent" for u in users[1:]}}
    # Throttled uncounted until singled out, then two counted attempts.
    assert outcomes(config, 1) == ["retry", "dead"]
    assert relay.deferred >= ALONE_LIMIT + 2
    assert sorted(m.rcpt_tos[0] for m in relay.messages) == sorted(
        f"{u}@example.com" for u in users[1:])


def test_stopping_during_a_long_pause_is_prompt_and_loses_nothing(config_data):
    with RejectingServer(451, "4.7.1 Rate limit exceeded", stage="MAIL") as relay:
        config = build_config(config_data, smtp={
            "url": relay.url, "connections": 2, "throttle_backoff": "60s"})
        queue_users(config, ["u1", "u2", "u3"])
        running = RunningWorker(config)
        with running:
            wait_until(lambda: relay.rejected >= 1, timeout=10, message="throttled")
            time.sleep(0.2)  # the senders are waiting out the 60 s pause
            started = time.monotonic()
        assert time.monotonic() - started < 5
    rows = deliveries(config)
    assert [row["status"] for row in rows] == ["queued"] * 3, rows
    assert [row["attempts"] for row in rows] == [0] * 3
    assert relay.messages == []


def test_a_recording_relay_is_not_throttled(config_data):
    with RecordingServer() as relay:
        config = build_config(config_data, smtp={"url": relay.url, "connections": 3})
        queue_users(config, ["u1", "u2"])
        with RunningWorker(config):
            assert_each_sent_once_uncounted(config, relay, ["u1", "u2"])
    assert connections_allowed() == 3
