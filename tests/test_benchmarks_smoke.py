"""Every benchmark runs end to end at tiny size and reports its figures, so the suite cannot rot.

These never assert speed: `make bench` measures, the tests only check that it still can.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.alertmanager import find_alertmanager
from benchmarks.harness import ROOT, Figure, Result
from benchmarks.run import BENCHMARKS


def run_tiny(tmp_path, number: int) -> tuple[dict, str]:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--only", str(number),
         "--workdir", str(tmp_path / "work"), "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(results.read_text())["results"]
    return result, done.stdout


@pytest.mark.parametrize("number", [n for n in sorted(BENCHMARKS) if n != 4])
def test_benchmark_runs_and_reports_its_figures(tmp_path, number):
    result, output = run_tiny(tmp_path, number)
    assert result["number"] == number and result["skipped"] is None
    assert result["figures"], output
    for figure in result["figures"]:
        assert isinstance(figure["value"], int | float) and figure["value"] >= 0, figure
        if figure["baseline"] is not None:
            assert figure["ratio"] is not None, figure
    assert f"{number}. " in output and "cores" in output
    if number == 3:
        # No added latency, 20 ms, 10 connections vs 1: each with the CPU per email beside it
        assert [f["target"] for f in result["figures"]] == [">= 0.5", ">= 0.9", ">= 8"]
        assert "no added latency" in result["figures"][0]["label"]
        for figure in result["figures"]:
            assert figure["details"][0].startswith("CPU per email: Nudge"), figure


def test_alertmanager_comparison_runs_or_says_why_not(tmp_path):
    result, output = run_tiny(tmp_path, 4)
    if find_alertmanager() is None:
        assert "SKIPPED" in output and "ALERTMANAGER_BIN" in result["skipped"]
        return
    assert result["skipped"] is None, output
    rate, connections = result["figures"]
    assert rate["value"] > 0 and rate["baseline"] > 0 and rate["ratio"] > 0
    assert rate["target"] == ">= 1.0" and "smtp.connections=64" in rate["label"]
    assert any(detail.startswith("CPU per email: Nudge") for detail in rate["details"]), output
    # Nudge's connections held at once, with Alertmanager's beside, against the limit
    assert 1 <= connections["value"] <= 64 and connections["baseline"] >= 1
    assert connections["target"] == "<= 64"
    # Medians of runs that take turns, every run's rate printed beside them
    assert any(note.startswith("median of 1 run(s), the sides taking turns; emails/s in each "
                               "run: Nudge ") for note in result["notes"]), output


def test_only_rejects_an_unknown_benchmark():
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "99"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no benchmark 99" in done.stderr


@pytest.mark.parametrize(("value", "printed"), [
    (797, "ratio 0.797, target >= 0.8: MISSED"),  # not "0.80 ... MISSED"
    (804, "ratio 0.80, target >= 0.8: MET"),
    (650, "ratio 0.65, target >= 0.8: MISSED"),
])
def test_a_ratio_that_misses_its_target_never_reads_as_the_target(value, printed):
    figure = Figure("Nudge", value, "alerts/s", baseline=1000, baseline_label="bare",
                    target=">= 0.8")

    assert f"      {printed}" in Result(1, "Ingest", [figure]).lines()
