"""app.interrupts.Interrupt: a threading.Event that select() can wait for."""

from __future__ import annotations

import os
import select
import threading
import time

from app.interrupts import Interrupt


def readable(interrupt: Interrupt) -> bool:
    return bool(select.select([interrupt], [], [], 0)[0])


def test_it_is_readable_exactly_while_set():
    interrupt = Interrupt()
    assert not readable(interrupt) and not interrupt.is_set()
    interrupt.set()
    interrupt.set()  # twice: still one event
    assert readable(interrupt) and interrupt.is_set()
    assert interrupt.wait(0)  # a threading.Event all the same
    interrupt.clear()
    assert not readable(interrupt) and not interrupt.is_set()


def test_select_wakes_when_another_thread_sets_it():
    interrupt = Interrupt()
    threading.Timer(0.1, interrupt.set).start()
    started = time.monotonic()
    assert select.select([interrupt], [], [], 10)[0] == [interrupt]
    assert time.monotonic() - started < 5


def test_a_byte_left_by_a_set_racing_a_clear_is_discarded():
    interrupt = Interrupt()
    # A set() whose flag a clear() reset before set() wrote its byte: readable, yet clear.
    os.write(interrupt._write, b"!")
    assert readable(interrupt) and not interrupt.is_set()
    interrupt.discard_stale()
    assert not readable(interrupt)
    interrupt.set()
    interrupt.discard_stale()  # set: kept, the waiter must see it
    assert readable(interrupt)


def test_many_sets_without_a_clear_never_block_the_setter():
    interrupt = Interrupt()
    for _ in range(100_000):  # more bytes than a pipe holds
        interrupt.set()
    interrupt.clear()
    assert not readable(interrupt)
