"""The sending breaker's state machine (app/circuit.py): plain data and an explicit clock."""

import pytest

from app.circuit import (
    DIRECTORY,
    DIRECTORY_ADDRESS,
    HOLD,
    PROBE,
    RECIPIENT,
    SEND,
    SETUP,
    SMTP,
    STATIC_MAP_ADDRESS,
    UNSURE,
    Breaker,
)


def test_not_paused_everything_is_sent_and_claims_are_unlimited():
    breaker = Breaker(probe_interval=30)
    assert breaker.claimable(0) is None
    assert [breaker.admit(n, 0) for n in (1, 2, 3)] == [SEND, SEND, SEND]


def test_a_setup_failure_pauses_then_one_probe_per_interval():
    breaker = Breaker(probe_interval=30)
    assert breaker.setup_failed("smtp_sender", "553 sender not allowed", now=100) is True
    assert breaker.setup_failed("smtp_sender", "553 sender not allowed", now=101) is False

    assert breaker.claimable(110) == 0
    assert breaker.admit(7, 110) == HOLD  # claimed before the pause: back to the queue
    assert breaker.claimable(131) == 1
    assert breaker.admit(8, 131) == PROBE
    assert breaker.admit(9, 131) == HOLD  # one probe at a time
    assert breaker.claimable(200) == 0  # while the probe is out

    breaker.setup_failed("smtp_sender", "553 sender not allowed", now=132)  # the probe failed
    breaker.finished(8, 132)
    assert breaker.claimable(150) == 0
    assert breaker.claimable(163) == 1


def test_the_part_that_works_again_resumes_only_its_own_reasons():
    breaker = Breaker(probe_interval=30)
    breaker.setup_failed("smtp_auth", "535 bad login", now=0)
    breaker.setup_failed("directory_auth", "401", now=0)

    assert breaker.worked(DIRECTORY, now=40) == ["directory_auth"]
    assert breaker.paused == {"smtp_auth": "535 bad login"}
    assert breaker.worked(SMTP, now=41) == ["smtp_auth"]
    assert breaker.paused == {}
    assert breaker.claimable(41) is None
    assert breaker.admit(5, 41) == SEND


def test_a_probe_that_ends_without_a_verdict_waits_for_the_next_interval():
    breaker = Breaker(probe_interval=10)
    breaker.setup_failed("smtp_tls", "no STARTTLS", now=0)
    assert breaker.admit(1, 10) == PROBE
    breaker.finished(1, 11)  # e.g. the user had unsubscribed: nothing was learnt
    assert breaker.claimable(15) == 0
    assert breaker.admit(2, 21) == PROBE


def test_unknown_reasons_are_refused():
    with pytest.raises(ValueError):
        Breaker().setup_failed("disk_full", "x", now=0)


# -- whose fault a directory 404 is -------------------------------------------------------------


def test_a_404_is_the_recipients_only_after_the_directory_answered_a_record():
    breaker = Breaker(not_found_threshold=3)
    assert breaker.directory_not_found("ghost") == UNSURE  # nothing shows the URL is right
    breaker.worked(DIRECTORY, now=0)
    assert breaker.directory_not_found("ghost") == RECIPIENT
    assert breaker.directory_not_found("ghost") == RECIPIENT  # the same user again


def test_404s_for_different_users_in_a_row_are_first_unsure_then_the_setup():
    breaker = Breaker(not_found_threshold=3)
    breaker.worked(DIRECTORY, now=0)
    assert breaker.directory_not_found("a") == RECIPIENT
    assert breaker.directory_not_found("b") == UNSURE  # two in a row: wait and see
    assert breaker.directory_not_found("c") == SETUP
    breaker.setup_failed("directory_not_found", "404 for everyone", now=1)
    assert breaker.directory_not_found("d") == SETUP  # stays so until a record comes back

    assert breaker.worked(DIRECTORY, now=50) == ["directory_not_found"]
    assert breaker.directory_not_found("b") == RECIPIENT


def test_a_record_in_between_resets_the_streak():
    breaker = Breaker(not_found_threshold=2)
    breaker.worked(DIRECTORY, now=0)
    for user in ("a", "b", "c", "d"):
        assert breaker.directory_not_found(user) == RECIPIENT
        breaker.worked(DIRECTORY, now=1)


# -- whose fault a record without an address is -----------------------------------------------


def test_a_record_without_an_address_is_the_users_only_after_records_have_shown_the_field():
    breaker = Breaker(not_found_threshold=3)
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "nomail") == UNSURE
    breaker.worked(DIRECTORY, now=0)  # a record, but that says nothing about its fields
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "nomail") == UNSURE
    breaker.worked(DIRECTORY_ADDRESS, now=0)  # a record with the address
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "nomail") == RECIPIENT
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "nomail") == RECIPIENT


def test_records_without_an_address_for_different_users_in_a_row_pause_until_one_has_it():
    breaker = Breaker(probe_interval=30, not_found_threshold=3)
    breaker.worked(DIRECTORY_ADDRESS, now=0)
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "a") == RECIPIENT
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "b") == UNSURE
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "c") == SETUP
    breaker.setup_failed("directory_no_address", "no 'mail' field", now=1)
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "a") == SETUP

    # The directory answering records proves the URL, not the field: still paused.
    assert breaker.worked(DIRECTORY, now=40) == []
    assert breaker.paused == {"directory_no_address": "no 'mail' field"}
    assert breaker.worked(DIRECTORY_ADDRESS, now=41) == ["directory_no_address"]
    assert breaker.claimable(41) is None
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "b") == RECIPIENT


def test_a_record_with_an_address_in_between_resets_the_no_address_streak():
    breaker = Breaker(not_found_threshold=2)
    breaker.worked(DIRECTORY_ADDRESS, now=0)
    for user in ("a", "b", "c", "d"):
        assert breaker.record_without_address(DIRECTORY_ADDRESS, user) == RECIPIENT
        breaker.worked(DIRECTORY_ADDRESS, now=1)


def test_each_source_of_records_has_its_own_no_address_streak():
    breaker = Breaker(not_found_threshold=2)
    breaker.worked(STATIC_MAP_ADDRESS, now=0)
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "a") == UNSURE
    assert breaker.record_without_address(STATIC_MAP_ADDRESS, "a") == RECIPIENT
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "b") == SETUP
    breaker.setup_failed("directory_no_address", "no 'mail' field", now=1)
    # The static map's addresses say nothing about the directory's field.
    assert breaker.worked(STATIC_MAP_ADDRESS, now=2) == []
    assert breaker.record_without_address(DIRECTORY_ADDRESS, "c") == SETUP
    assert breaker.record_without_address(STATIC_MAP_ADDRESS, "c") == RECIPIENT
