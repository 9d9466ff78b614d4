"""The dispatcher's claim slots (app/worker.ClaimSlots): a claim gathers the slots of senders
finishing one after another, and claims at once when the senders run out of work."""

from __future__ import annotations

import threading
import time

import pytest

from app import worker
from app.worker import ClaimSlots

# Wide enough that a loaded machine's late wake-ups do not decide these tests.
GATHER = 0.5


@pytest.fixture(autouse=True)
def wide_gathering(monkeypatch):
    monkeypatch.setattr(worker, "CLAIM_GATHER", GATHER)


def finish_later(slots: ClaimSlots, delays: list[float], idle_last: bool = False) -> None:
    def run():
        for n, delay in enumerate(delays):
            time.sleep(delay)
            slots.finished(idle=idle_last and n == len(delays) - 1)

    threading.Thread(target=run, daemon=True).start()


def test_a_claim_gathers_while_senders_keep_finishing():
    slots = ClaimSlots(0)
    # Each finish comes well within CLAIM_GATHER of the last, so all six are gathered,
    # although together they take longer than CLAIM_GATHER.
    finish_later(slots, [0.0] + [GATHER / 4] * 5)
    assert slots.take(None, gather=6, in_hand=lambda: True, timeout=5) == 6


def test_a_claim_stops_gathering_when_senders_stop_finishing():
    slots = ClaimSlots(0)
    finish_later(slots, [0.0, 0.01, 20 * GATHER])
    started = time.monotonic()
    assert slots.take(None, gather=12, in_hand=lambda: True, timeout=5) == 2
    assert time.monotonic() - started < 10 * GATHER


def test_a_claim_is_made_at_once_when_the_senders_run_out_of_work():
    slots = ClaimSlots(0)
    work_left = threading.Event()
    work_left.set()

    def run():
        slots.finished(idle=False)
        time.sleep(0.01)
        work_left.clear()
        slots.finished(idle=True)

    started = time.monotonic()
    threading.Thread(target=run, daemon=True).start()
    assert slots.take(None, gather=12, in_hand=work_left.is_set, timeout=5) == 2
    assert time.monotonic() - started < GATHER, "it waited for more senders to finish"


def test_a_paused_claim_takes_only_what_is_allowed_and_slots_come_back():
    slots = ClaimSlots(5)
    assert slots.take(1, gather=1, in_hand=lambda: True, timeout=1) == 1
    assert slots.take(None, gather=1, in_hand=lambda: False, timeout=1) == 4
    assert slots.take(None, gather=1, in_hand=lambda: False, timeout=0.05) == 0
    slots.give_back(3)
    assert slots.take(None, gather=1, in_hand=lambda: False, timeout=1) == 3
