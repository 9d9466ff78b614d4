"""The delivery queue on a real SQLite file: claims, leases, settling."""

from __future__ import annotations

import time

import pytest

from app.queue import QUEUED, SENT, claim_due_deliveries, list_attempts, release, settle
from app.storage import database
from tests.conftest import fixture_bytes


@pytest.fixture
def db(app, client, auth):
    """The app's database with one queued delivery (the per-user fixture)."""
    assert client.post("/webhook", data=fixture_bytes("firing-per-user.json"),
                       headers=auth).json["queued"] == 1
    with app.app_context():
        yield database()


def test_claim_is_exclusive_until_the_lease_expires(db):
    now = time.time()
    (first,) = claim_due_deliveries(db, now, lease=60, limit=10)
    assert claim_due_deliveries(db, now + 1, lease=60, limit=10) == []
    (second,) = claim_due_deliveries(db, now + 61, lease=60, limit=10)
    assert second.id == first.id and second.attempts == 2


def test_a_claim_whose_lease_expired_cannot_overwrite_the_newer_claim(db):
    now = time.time()
    (old,) = claim_due_deliveries(db, now, lease=10, limit=1)
    (new,) = claim_due_deliveries(db, now + 11, lease=10, limit=1)
    assert settle(db, new, SENT, now + 12, recipient="ada@example.com")
    assert not settle(db, old, QUEUED, now + 13, error="late failure", retry_at=now + 60)
    status, error = db.execute(
        "SELECT status, last_error FROM deliveries WHERE id = ?", (new.id,)
    ).fetchone()
    assert (status, error) == (SENT, None)
    outcomes = [a["outcome"] for a in list_attempts(db, new.id)]
    assert outcomes == ["retry (after its lease expired)", "sent"]


def test_release_gives_the_delivery_back_untouched(db):
    now = time.time()
    (claimed,) = claim_due_deliveries(db, now, lease=60, limit=1)
    release(db, claimed, now)
    (again,) = claim_due_deliveries(db, now, lease=60, limit=1)
    assert again.attempts == 1
    assert len(list_attempts(db, again.id)) == 1
