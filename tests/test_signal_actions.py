"""Signals are acted on by a thread of their own (app/signal_actions.py), so a signal that lands
while the main thread holds a lock the action needs cannot hang the process."""

import signal
import subprocess
import sys
import textwrap

# The main thread spends most of its time holding the lock inside the Event that SIGTERM sets.
# A plain `signal.signal(SIGTERM, lambda *_: stopping.set())` hangs about one run in three.
BUSY_MAIN_THREAD = textwrap.dedent("""
    import signal, sys, threading
    from app.signal_actions import on_signals

    stopping = threading.Event()
    reloads = []

    def reload(sig):
        reloads.append(sig)
        print("reloaded", len(reloads), flush=True)
        if len(reloads) == 1:
            raise RuntimeError("the first reload fails")

    on_signals({signal.SIGTERM: lambda sig: stopping.set(), signal.SIGHUP: reload})
    print("ready", flush=True)
    while not stopping.is_set():
        with stopping._cond:
            pass
    print("stopped", flush=True)
""")


def start():
    process = subprocess.Popen([sys.executable, "-c", BUSY_MAIN_THREAD], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def test_a_stop_signal_stops_a_process_whose_main_thread_holds_the_lock_it_needs():
    for _ in range(20):
        process = start()
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("SIGTERM did not stop the process") from None
        assert out.strip() == "stopped"
        assert process.returncode == 0


def test_a_failing_action_is_logged_and_later_signals_still_work():
    process = start()
    try:
        process.send_signal(signal.SIGHUP)
        assert process.stdout.readline() == "reloaded 1\n"
        process.send_signal(signal.SIGHUP)
        assert process.stdout.readline() == "reloaded 2\n"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert out.strip() == "stopped"
    assert "handling SIGHUP failed" in err and "RuntimeError: the first reload fails" in err
