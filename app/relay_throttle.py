"""Slow the whole sending pool down when the relay asks (421, 451 4.7.x, 454), not one message.

A relay that answers "rate limit exceeded" or "too many connections" is not refusing a
message: it wants fewer of them, less often. Retrying that one message alone (and counting an
attempt) while every other connection keeps sending would make the relay throttle harder and
eventually turn good messages `dead`. Instead, on a throttled reply:

- the whole pool pauses: no sender starts a send for `backoff` seconds (1 s by default,
  doubling while the relay keeps throttling, up to a maximum; a "try again in N seconds" in
  the reply is honoured within those bounds);
- the number of connections allowed to send halves (at least 1), and climbs back by one each
  time as many sends as are allowed have gone through without a throttled reply (AIMD, as
  TCP does); a sender beyond the limit closes its connection and takes no work, so the relay
  sees fewer connections, not only fewer messages;
- the message goes back to the queue uncounted, due when the pause ends.

Back at the full number of connections after a full round of sends, the backoff starts over
from its first value. Replies to sends that started before the latest slow-down belong to it:
they neither slow the pool down again nor count towards climbing back.

One message the relay keeps deferring with such a reply while it takes the others (a policy
about that recipient, not our pace) must not hold everyone at the slowest pace forever: once
it has been throttled `ALONE_LIMIT` more times with other messages going through in between,
its throttling is its own transient failure, counted and retried like any other
(`SingledOut`).

`Pace` is the policy over plain data and an explicit clock (no locks, no I/O); `RelayThrottle`
shares one among a worker's sender threads, logs the two transitions (slowed down, back to
full speed) and exports them as metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("nudge.throttle")

# Throttled again this many times, each time after other messages went through: the relay
# defers this message, not our pace.
ALONE_LIMIT = 3


@dataclass
class Pace:
    connections: int
    first_backoff: float = 1.0
    max_backoff: float = 300.0
    allowed: int = field(init=False)  # senders that may send now
    backoff: float = 0.0  # the latest pause; 0 at full speed
    resume_at: float = 0.0  # no send starts before this
    episode: int = 0  # counts slow-downs: which one a send started under
    successes: int = 0  # sends not throttled since `allowed` last changed

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"connections must be at least 1, got {self.connections}")
        self.allowed = self.connections

    @property
    def full_speed(self) -> bool:
        return self.backoff == 0.0

    def pause_left(self, now: float) -> float:
        """Seconds before the next send may start (0: now)."""
        return max(0.0, self.resume_at - now)

    def may_send(self, seat: int) -> bool:
        """Whether the sender in `seat` (0, 1, ...) is within the connections allowed now."""
        return self.allowed >= self.connections or seat < self.allowed

    def throttled(self, episode: int, now: float, hint: float | None = None) -> bool:
        """The relay asked to slow down, replying to a send started in `episode`. True when
        this slowed a pool that was at full speed (worth a log line)."""
        if episode != self.episode:
            return False  # started before the latest slow-down: already answered by it
        was_full_speed = self.full_speed
        self.episode += 1
        self.backoff = min(self.max_backoff, self.backoff * 2 or self.first_backoff)
        pause = self.backoff if hint is None else min(self.max_backoff, max(self.backoff, hint))
        self.resume_at = max(self.resume_at, now + pause)
        self.allowed = max(1, self.allowed // 2)
        self.successes = 0
        return was_full_speed

    def succeeded(self, episode: int) -> bool:
        """A send started in `episode` was not throttled. True when the pool is back at full
        speed because of it (worth a log line)."""
        if episode != self.episode or self.full_speed:
            return False
        self.successes += 1
        if self.successes < self.allowed:
            return False
        self.successes = 0
        if self.allowed < self.connections:
            self.allowed += 1
            return False
        self.backoff = 0.0  # a full round at full strength: the next slow-down starts small
        return True


class SingledOut:
    """Which messages the relay throttles while it lets others through (plain data, no I/O)."""

    def __init__(self, limit: int = ALONE_LIMIT, remember: int = 10_000) -> None:
        self.limit = limit
        self.remember = remember
        self.went_through = 0  # sends not throttled, ever
        # delivery id -> (times throttled with others sent in between, went_through then)
        self._seen: OrderedDict[int, tuple[int, int]] = OrderedDict()

    def sent(self) -> None:
        self.went_through += 1

    def throttled(self, delivery_id: int) -> bool:
        """This delivery was throttled: True when it is singled out (its own failure)."""
        strikes, then = self._seen.pop(delivery_id, (0, None))
        if then is not None and self.went_through > then:
            strikes += 1
        self._seen[delivery_id] = (strikes, self.went_through)
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)  # the oldest: long sent, or given up
        return strikes >= self.limit


@dataclass
class Turn:
    """One sender's permission to send, for telling the throttle how the send went."""

    episode: int
    throttled: bool = False


class RelayThrottle:
    """One Pace shared by a worker's sender threads.

    A sender thread takes a seat once (`take_seat`); before taking work it `park`s while its
    seat is beyond the connections allowed; before each send it waits for its turn
    (`wait_turn`), and after it reports the outcome (`throttled` or `finished`)."""

    def __init__(self, connections: int, first_backoff: float = 1.0,
                 max_backoff: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self._pace = Pace(connections, first_backoff, max_backoff)
        self._singled_out = SingledOut()
        self._clock = clock
        self._changed = threading.Condition()
        self._seats: dict[int, int] = {}  # thread ident -> seat
        self._stopped = False
        from app.metrics import SMTP_CONNECTIONS_ALLOWED, SMTP_THROTTLED

        self._allowed_gauge = SMTP_CONNECTIONS_ALLOWED
        self._throttled_counter = SMTP_THROTTLED
        self._allowed_gauge.set(connections)

    @property
    def allowed(self) -> int:
        with self._changed:
            return self._pace.allowed

    def take_seat(self) -> int:
        """Give the calling sender thread the next seat; threads without one are never
        parked (seat 0)."""
        with self._changed:
            seat = self._seats.setdefault(threading.get_ident(), len(self._seats))
        return seat

    def park(self, on_park: Callable[[], None]) -> None:
        """Block while this thread's seat is beyond the connections allowed (until stop()),
        calling `on_park` first (close the idle connection: the relay sees fewer of them)."""
        with self._changed:
            if self._may_send():
                return
        on_park()
        with self._changed:
            self._changed.wait_for(lambda: self._stopped or self._may_send())

    def wait_turn(self) -> Turn | None:
        """Wait until the pool's pause is over; None when this thread may not send after all
        (stopping, or its seat is now beyond the connections allowed): give the delivery back."""
        with self._changed:
            while not self._stopped:
                left = self._pace.pause_left(self._clock())
                if left <= 0:
                    return Turn(self._pace.episode) if self._may_send() else None
                self._changed.wait(left)
            return None

    def throttled(self, turn: Turn, detail: str, hint: float | None = None,
                  delivery_id: int | None = None) -> float | None:
        """The relay asked to slow down in reply to `turn`'s send; returns the seconds until
        the pool sends again (when the message is due), or None when the relay singles this
        delivery out (the pool goes on: retry it as its own transient failure)."""
        turn.throttled = True
        self._throttled_counter.inc()
        with self._changed:
            if delivery_id is not None and self._singled_out.throttled(delivery_id):
                return None
            now = self._clock()
            slowed = self._pace.throttled(turn.episode, now, hint)
            allowed, backoff, left = self._pace.allowed, self._pace.backoff, \
                self._pace.pause_left(now)
            self._changed.notify_all()
        self._allowed_gauge.set(allowed)
        if slowed:
            log.warning("the relay asks to slow down (%s): pausing every connection for %gs, "
                        "then sending on %d of %d; messages stay queued, attempts uncounted",
                        detail, left, allowed, self._pace.connections)
        else:
            log.debug("throttled again: %d connections allowed, backoff %gs", allowed, backoff)
        return left

    def finished(self, turn: Turn) -> None:
        """`turn`'s send is over; unless it was throttled, it counts towards speeding up."""
        if turn.throttled:
            return
        with self._changed:
            self._singled_out.sent()
            if self._pace.full_speed:
                return  # the common case: nothing to climb back to
            before = self._pace.allowed
            recovered = self._pace.succeeded(turn.episode)
            allowed = self._pace.allowed
            if allowed != before:
                self._changed.notify_all()  # a parked sender may have its seat back
        if allowed != before:
            self._allowed_gauge.set(allowed)
        if recovered:
            log.warning("the relay takes our pace again: sending at full speed on %d "
                        "connections", allowed)

    def stop(self) -> None:
        """Wake every waiting sender (the worker is stopping)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _may_send(self) -> bool:
        return self._pace.may_send(self._seats.get(threading.get_ident(), 0))
