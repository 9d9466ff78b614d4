"""Pause sending while the setup is broken, and resume by itself once it works (a breaker).

A failure of the setup is nobody's recipient's fault: the relay refusing our envelope sender
or our login, TLS that cannot be had, a directory refusing our credentials (401/403) or
answering 404 for every user (a wrong URL path). Failing the deliveries for it would burn
every one of them. Instead sending pauses: deliveries stay queued without an attempt counted,
one of them is tried every `probe_interval` seconds (the probe), and the first probe that
gets past the broken part resumes sending.

A directory 404 is only a recipient's fault when the directory is known to work: it answered
a record for the last user it was asked about before this streak of 404s. While that is not
known (since start-up, or after another user's 404) the 404 is "unsure": the delivery waits,
uncounted, for the next answer to tell. `not_found_threshold` different users in a row
answered 404 means the directory is what is wrong.

A record without an address is judged the same way, per source of records (the directory, the
static map): it is that user's fault only once the source has shown its records hold the
address (the last record it gave before this streak had one); `not_found_threshold` different
users in a row with a record but no address mean the field is wrong (`directory.email_field`
names a field the records do not have), not every one of those users.

`Breaker` is the state machine, over plain data and an explicit clock: no locks, no I/O.
`SendingGate` (below) shares one among the sender threads and reports it as a metric.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("nudge.circuit")

SMTP = "smtp"
DIRECTORY = "directory"
# Whether the records of a source hold the address, apart from whether the source answers.
DIRECTORY_ADDRESS = "directory_address"
STATIC_MAP_ADDRESS = "static_map_address"
# The `reason` label of nudge_sending_paused, and which part of the setup each is about.
REASONS = {
    "smtp_sender": SMTP,  # 5xx at MAIL FROM: the relay refuses our envelope sender
    "smtp_auth": SMTP,  # login refused (535...), or required and not configured (530)
    "smtp_tls": SMTP,  # no STARTTLS offered though a login needs it, untrusted certificate
    "directory_auth": DIRECTORY,  # 401/403 from the directory
    "directory_not_found": DIRECTORY,  # 404 for every user asked
    "directory_no_address": DIRECTORY_ADDRESS,  # records, but none with the address field
    "static_map_no_address": STATIC_MAP_ADDRESS,  # the static map's entries, likewise
}
# The pause reason when a source's records keep coming without the address.
NO_ADDRESS_REASONS = {DIRECTORY_ADDRESS: "directory_no_address",
                      STATIC_MAP_ADDRESS: "static_map_no_address"}

# What to do with a claimed delivery.
SEND = "send"  # not paused
PROBE = "probe"  # paused: this one tests whether the setup works again
HOLD = "hold"  # paused: give it back to the queue untouched

# Whose fault a directory 404 (or a record without an address) is.
RECIPIENT = "recipient"
UNSURE = "unsure"
SETUP = "setup"


@dataclass
class Breaker:
    probe_interval: float = 30.0
    not_found_threshold: int = 3
    paused: dict[str, str] = field(default_factory=dict)  # reason -> what went wrong
    probe: int | None = None  # the delivery id being tried while paused
    next_probe_at: float = 0.0
    directory_proven: bool = False  # its last answer before the current 404s was a record
    not_found_users: set[str] = field(default_factory=set)  # 404s since its last record
    # Per *_ADDRESS part: its last record before the current streak had the address, and the
    # users whose records had none since then.
    address_proven: set[str] = field(default_factory=set)
    no_address_users: dict[str, set[str]] = field(default_factory=dict)

    def claimable(self, now: float) -> int | None:
        """How many deliveries may be claimed now: None for no limit (not paused), else 0,
        or 1 when a probe is due."""
        if not self.paused:
            return None
        return 1 if self.probe is None and now >= self.next_probe_at else 0

    def admit(self, delivery_id: int, now: float) -> str:
        """SEND, PROBE or HOLD for a claimed delivery that is about to be delivered."""
        if not self.paused:
            return SEND
        if self.probe == delivery_id:
            return PROBE
        if self.probe is None and now >= self.next_probe_at:
            self.probe = delivery_id
            return PROBE
        return HOLD

    def setup_failed(self, reason: str, message: str, now: float) -> bool:
        """Pause for `reason`; True when it was not paused for it already."""
        if reason not in REASONS:
            raise ValueError(f"unknown pause reason {reason!r}")
        new = reason not in self.paused
        self.paused[reason] = message
        self.next_probe_at = max(self.next_probe_at, now + self.probe_interval)
        return new

    def worked(self, part: str, now: float) -> list[str]:
        """That part of the setup (SMTP or DIRECTORY) just worked: the reasons it resumes."""
        if part == DIRECTORY:
            self.directory_proven = True
            self.not_found_users.clear()
        if part in NO_ADDRESS_REASONS:
            self.address_proven.add(part)
            self.no_address_users.pop(part, None)
        resumed = sorted(reason for reason in self.paused if REASONS[reason] == part)
        for reason in resumed:
            del self.paused[reason]
        if not self.paused:
            self.next_probe_at = 0.0
        return resumed

    def directory_not_found(self, user_id: str) -> str:
        """The directory answered 404 for this user: RECIPIENT (fail the delivery), UNSURE
        (keep it waiting) or SETUP (pause: the directory fails for everyone)."""
        if "directory_not_found" in self.paused:
            return SETUP
        self.not_found_users.add(user_id)
        if len(self.not_found_users) >= self.not_found_threshold:
            return SETUP
        if self.directory_proven and self.not_found_users == {user_id}:
            return RECIPIENT
        return UNSURE

    def record_without_address(self, part: str, user_id: str) -> str:
        """The source (DIRECTORY_ADDRESS or STATIC_MAP_ADDRESS) has a record for this user
        without an address: RECIPIENT (fail the delivery), UNSURE (keep it waiting) or SETUP
        (pause: the records have no such field for anyone)."""
        if NO_ADDRESS_REASONS[part] in self.paused:
            return SETUP
        users = self.no_address_users.setdefault(part, set())
        users.add(user_id)
        if len(users) >= self.not_found_threshold:
            return SETUP
        if part in self.address_proven and users == {user_id}:
            return RECIPIENT
        return UNSURE

    def settled(self, part: str) -> bool:
        """Whether `worked(part)` would change nothing (the common case, checked cheaply)."""
        if any(REASONS[reason] == part for reason in self.paused):
            return False
        if part == DIRECTORY:
            return self.directory_proven and not self.not_found_users
        if part in NO_ADDRESS_REASONS:
            return part in self.address_proven and not self.no_address_users.get(part)
        return True

    def finished(self, delivery_id: int, now: float) -> None:
        """A delivery admitted by `admit` is done, whatever its outcome."""
        if self.probe == delivery_id:
            self.probe = None
            if self.paused:
                self.next_probe_at = max(self.next_probe_at, now + self.probe_interval)


class SendingGate:
    """One Breaker shared by a worker's sender threads; logs and exports its changes as
    `nudge_sending_paused{reason}`."""

    def __init__(self, probe_interval: float, not_found_threshold: int = 3) -> None:
        self._breaker = Breaker(probe_interval, not_found_threshold)
        self._lock = threading.Lock()
        from app.metrics import SENDING_PAUSED

        self._gauge = SENDING_PAUSED
        for reason in REASONS:
            self._gauge.labels(reason).set(0)

    @property
    def probe_interval(self) -> float:
        return self._breaker.probe_interval

    @property
    def not_found_threshold(self) -> int:
        return self._breaker.not_found_threshold

    def paused_reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._breaker.paused)

    def claimable(self) -> int | None:
        with self._lock:
            return self._breaker.claimable(time.time())

    def seconds_to_probe(self) -> float:
        with self._lock:
            return max(0.0, self._breaker.next_probe_at - time.time())

    def admit(self, delivery_id: int) -> str:
        with self._lock:
            return self._breaker.admit(delivery_id, time.time())

    def finished(self, delivery_id: int) -> None:
        with self._lock:
            self._breaker.finished(delivery_id, time.time())

    def setup_failed(self, reason: str, message: str) -> None:
        with self._lock:
            new = self._breaker.setup_failed(reason, message, time.time())
        if new:
            self._gauge.labels(reason).set(1)
            log.error("sending paused (%s): %s; deliveries stay queued, one is tried every "
                      "%gs until it works", reason, message, self.probe_interval)

    def worked(self, part: str) -> None:
        with self._lock:
            if part != SMTP and self._breaker.settled(part):
                return  # the common case: nothing changes
            resumed = self._breaker.worked(part, time.time())
        for reason in resumed:
            self._gauge.labels(reason).set(0)
            log.warning("sending resumed: %s works again (was paused: %s)", part, reason)

    def directory_not_found(self, user_id: str) -> str:
        with self._lock:
            return self._breaker.directory_not_found(user_id)

    def record_without_address(self, part: str, user_id: str) -> str:
        with self._lock:
            return self._breaker.record_without_address(part, user_id)
