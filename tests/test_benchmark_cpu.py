"""The benchmarks' CPU accounting counts every process Nudge starts, exited ones included.

Nudge's delivery worker may run sender processes of its own, so CPU per email must be the
whole process tree's: these run real processes that burn a known amount of CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from benchmarks.harness import CpuMeter, cpu_seconds, tree_cpu_seconds

BURN = 0.3  # CPU seconds each child burns (process_time: the same on a busy machine)

# A child that burns BURN CPU seconds, says so, and then does as its first argument says:
# "stay" (sleep until killed) or "exit"; with "burn-again" it waits for a line on stdin,
# burns BURN more and exits.
CHILD = textwrap.dedent(f"""
    import sys, time
    def burn(until):
        while time.process_time() < until:
            pass
    burn({BURN})
    print("burnt", flush=True)
    if sys.argv[1] == "stay":
        time.sleep(120)
    elif sys.argv[1] == "burn-again":
        sys.stdin.readline()
        burn(2 * {BURN})
""")

# The process the benchmark would measure: it starts children and reaps the ones that end.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = sys.argv[1]
    if sys.argv[2] == "live-and-exited":
        live = subprocess.Popen([sys.executable, "-c", child, "stay"], stdout=subprocess.PIPE)
        done = subprocess.Popen([sys.executable, "-c", child, "exit"], stdout=subprocess.PIPE)
        live.stdout.readline()
        done.stdout.readline()
        done.wait()  # reaped: its CPU is now in this process's cutime/cstime
        print("ready", flush=True)
        time.sleep(120)
    else:  # one child that burns, waits for the word, burns again and exits
        worker = subprocess.Popen([sys.executable, "-c", child, "burn-again"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        worker.stdout.readline()
        print("burnt", flush=True)
        sys.stdin.readline()
        worker.stdin.write(b"go\\n")
        worker.stdin.flush()
        worker.wait()
        print("reaped", flush=True)
        time.sleep(120)
""")


def start_parent(mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARENT, CHILD, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)


def stop(parent: subprocess.Popen) -> None:
    os.killpg(parent.pid, signal.SIGKILL)  # the parent's own session: it and its children
    parent.wait(10)


def test_tree_cpu_counts_a_running_child_and_one_that_exited():
    parent = start_parent("live-and-exited")
    try:
        assert parent.stdout.readline() == b"ready\n"
        own = cpu_seconds(parent.pid)
        tree = tree_cpu_seconds(parent.pid)
    finally:
        stop(parent)
    # Two children burnt BURN each (less a clock tick of rounding); the parent only waited.
    assert own < BURN
    assert tree >= own + 2 * BURN - 0.05, (own, tree)


def test_cpu_meter_counts_a_child_that_exits_during_the_measurement_once():
    parent = start_parent("burn-again")
    try:
        assert parent.stdout.readline() == b"burnt\n"  # the child has burnt BURN before start()
        meter = CpuMeter(parent.pid).start()
        tree_before = tree_cpu_seconds(parent.pid)
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"reaped\n"  # it burnt BURN more and exited
        used = sum(meter.stop().values())
        tree_used = tree_cpu_seconds(parent.pid) - tree_before
    finally:
        stop(parent)
    # The BURN seconds burnt during the measurement, not the BURN before it nor nothing.
    for measured in (used, tree_used):
        assert BURN - 0.05 <= measured < 2 * BURN - 0.1, (used, tree_used)
