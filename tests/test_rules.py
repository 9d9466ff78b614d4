"""The behavioral alerting rules, their promtool unit tests and the shipped Prometheus and
Alertmanager configs, checked with the real `promtool` and `amtool`.

The binaries come from PATH or $PROMTOOL_BIN / $AMTOOL_BIN; `make test` installs them. They are
never skipped: a missing binary fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.durations import parse_cooldown

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "alert_rules"
DEPLOY = ROOT / "deploy"
SELF_MONITORING = DEPLOY / "nudge-self-monitoring.yml"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager.yml"

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
UNIT_TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml")) + sorted(
    (DEPLOY / "tests").glob("*.yml")
)

# The shared contract: alertname -> email_template.
CONTRACT = {
    "NoFirstApiCall": "onboarding_first_call",
    "FirstSuccessfulCall": "first_call_success",
    "QuotaNearlyExhausted": "quota_warning",
    "IntegrationErrorRateHigh": "error_rate_spike",
    "DeprecatedEndpointInUse": "deprecated_endpoint",
    "PaymentFailed": "payment_failed",
    "UsageDropped": "usage_drop",
}
# Which journey file each contract rule lives in.
RULE_HOME = {
    "NoFirstApiCall": "onboarding.yml",
    "FirstSuccessfulCall": "onboarding.yml",
    "QuotaNearlyExhausted": "usage.yml",
    "UsageDropped": "usage.yml",
    "IntegrationErrorRateHigh": "integration.yml",
    "DeprecatedEndpointInUse": "integration.yml",
    "PaymentFailed": "billing.yml",
}
# Delivery settings the product team decided on.
EXPECTED_SETTINGS = {
    "NoFirstApiCall": ("forever", "false"),
    "FirstSuccessfulCall": ("forever", "false"),
    "DeprecatedEndpointInUse": ("7d", "false"),
    "PaymentFailed": ("24h", "true"),
}
COOLDOWN_SYNTAX = re.compile(r"forever|(\d+[smhdw])+")
MOUNTED_RULE_FILES = [
    "/etc/prometheus/alert_rules/*.yml",
    "/etc/prometheus/nudge-self-monitoring.yml",
]
# Generated on first start into the `secrets` volume (deploy/generate-secrets.sh).
MOUNTED_TOKEN = "/run/secrets/nudge/webhook-token"


def _binary(name: str, env: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} not found (looked at ${env} and PATH). Run `make test`, which installs "
            f"the prometheus and prometheus-alertmanager packages, or set {env}.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool", "PROMTOOL_BIN")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _binary("amtool", "AMTOOL_BIN")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"`{' '.join(map(str, proc.args))}` exited {proc.returncode}:\n{output}"
    )
    return output


def _rules(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts(path: Path) -> list[dict]:
    return [rule for rule in _rules(path) if "alert" in rule]


def _behavioral_alerts() -> list[tuple[Path, dict]]:
    return [(path, rule) for path in RULE_FILES for rule in _alerts(path)]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- promtool -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*RULE_FILES, SELF_MONITORING], ids=_name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    output = _assert_ok(_run([promtool, "check", "rules", str(path)]))
    assert f"SUCCESS: {len(_rules(path))} rules found" in output


@pytest.mark.parametrize("path", UNIT_TEST_FILES, ids=_name)
def test_promtool_unit_tests(promtool: str, path: Path) -> None:
    output = _assert_ok(_run([promtool, "test", "rules", str(path)]))
    assert "SUCCESS" in output


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    """Each rule file has a promtool test file, and each alert is tested both ways."""
    fires: set[str] = set()
    silent: set[str] = set()
    tested_files: set[Path] = set()
    for test_file in UNIT_TEST_FILES:
        doc = yaml.safe_load(test_file.read_text())
        tested_files.update((test_file.parent / f).resolve() for f in doc["rule_files"])
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    for path in [*RULE_FILES, SELF_MONITORING]:
        assert path.resolve() in tested_files, f"no promtool test file loads {_name(path)}"
    names = {rule["alert"] for path in [*RULE_FILES, SELF_MONITORING] for rule in _alerts(path)}
    assert not names - fires, f"alerts never tested firing: {sorted(names - fires)}"
    behavioral = {rule["alert"] for _, rule in _behavioral_alerts()}
    assert not behavioral - silent, f"alerts never tested silent: {sorted(behavioral - silent)}"


# --- rule conventions (pure Python) --------------------------------------------------------


def test_contract_rules_are_shipped_in_their_journey_files() -> None:
    where = {rule["alert"]: path.name for path, rule in _behavioral_alerts()}
    names = [rule["alert"] for _, rule in _behavioral_alerts()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert {name: where.get(name) for name in RULE_HOME} == RULE_HOME


@pytest.mark.parametrize(
    ("path", "rule"),
    _behavioral_alerts(),
    ids=[f"{p.name}:{r['alert']}" for p, r in _behavioral_alerts()],
)
def test_behavioral_rule_follows_the_conventions(path: Path, rule: dict) -> None:
    name = rule["alert"]
    labels = rule.get("labels", {})
    annotations = rule.get("annotations", {})

    assert labels.get("email_template") in CONTRACT.values(), (
        f"{name}: email_template {labels.get('email_template')!r} is not a contract template"
    )
    if name in CONTRACT:
        assert labels["email_template"] == CONTRACT[name]
    assert "user_id" in rule["expr"], f"{name}: expr must produce a user_id label"
    assert "user_id" not in labels, f"{name}: user_id must come from the expr, not be static"
    assert "team" not in labels, f"{name}: team=ops would route it away from Nudge"

    assert annotations.get("summary"), f"{name}: needs a summary annotation"
    cooldown = annotations.get("nudge_cooldown")
    assert isinstance(cooldown, str) and COOLDOWN_SYNTAX.fullmatch(cooldown), (
        f"{name}: nudge_cooldown {cooldown!r} is not a duration like 24h/7d/1h30m or 'forever'"
    )
    parse_cooldown(cooldown)  # Nudge itself accepts it
    assert annotations.get("nudge_send_resolved") in ("true", "false"), (
        f"{name}: nudge_send_resolved must be the string \"true\" or \"false\""
    )
    if name in EXPECTED_SETTINGS:
        assert (cooldown, annotations["nudge_send_resolved"]) == EXPECTED_SETTINGS[name]

    # The end-to-end harness shortens `for:` with a regex on a line of its own.
    assert "for" in rule, f"{name}: needs a for: duration against flapping"
    line = re.compile(rf"^\s+for: {re.escape(str(rule['for']))}\s*$", re.MULTILINE)
    assert line.search(path.read_text()), f"{name}: write `for: {rule['for']}` on its own line"


def test_self_monitoring_rules_go_to_ops_not_to_users() -> None:
    alerts = _alerts(SELF_MONITORING)
    assert {a["alert"] for a in alerts} >= {
        "NudgeDown",
        "NudgeWebhookErrors",
        "NudgeEmailDeliveryFailing",
        "NudgeEmailsDead",
        "NudgeQueueBacklog",
        "NudgeAlertsTruncated",
    }
    for alert in alerts:
        labels = alert.get("labels", {})
        assert "email_template" not in labels, alert["alert"]
        assert labels.get("team") == "ops", alert["alert"]
        assert labels.get("severity") in ("critical", "warning"), alert["alert"]
        assert alert.get("annotations", {}).get("summary"), alert["alert"]


# --- Prometheus config ---------------------------------------------------------------------


def test_prometheus_config_scrapes_the_stack_and_loads_all_rules(
    promtool: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == MOUNTED_RULE_FILES
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["demo-api"] == ["demo-api:8000"]
    assert targets["nudge"] == ["nudge:8080"]
    am_targets = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert am_targets == ["alertmanager:9093"]

    config["rule_files"] = [str(RULES_DIR / "*.yml"), str(SELF_MONITORING)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    output = _assert_ok(_run([promtool, "check", "config", str(copy)]))
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", output))
    expected = sum(len(_rules(p)) for p in [*RULE_FILES, SELF_MONITORING])
    assert found == expected, output


# --- Alertmanager config -------------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = ALERTMANAGER_YML.read_text()
    assert MOUNTED_TOKEN in text
    folder = tmp_path_factory.mktemp("alertmanager")
    token_file = folder / "webhook-token"
    token_file.write_text("a-generated-token\n")
    copy = folder / "alertmanager.yml"
    copy.write_text(text.replace(MOUNTED_TOKEN, str(token_file)))
    return copy


def test_alertmanager_config_is_valid(amtool: str, alertmanager_copy: Path) -> None:
    output = _assert_ok(_run([amtool, "check-config", str(alertmanager_copy)]))
    assert "SUCCESS" in output


def test_nudge_receiver_gets_every_alert_with_the_token() -> None:
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    (webhook,) = receivers["nudge"]["webhook_configs"]
    assert webhook["url"] == "http://nudge:8080/webhook"
    assert webhook["send_resolved"] is True, "resolved emails need send_resolved: true"
    assert not webhook.get("max_alerts"), "max_alerts would silently drop users' alerts"
    auth = webhook["http_config"]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": MOUNTED_TOKEN}
    for compose in ("docker-compose.yml", "docker-compose.replicas.yml"):
        services = yaml.safe_load((ROOT / compose).read_text())["services"]
        assert "secrets:/run/secrets/nudge:ro" in services["alertmanager"]["volumes"], compose

    route = config["route"]
    assert route["receiver"] == "ops"
    (nudge_route,) = [r for r in route["routes"] if r["receiver"] == "nudge"]
    assert nudge_route["matchers"] == ['email_template=~".+"']
    assert nudge_route["group_by"] == ["alertname", "user_id"]
    assert (
        nudge_route["group_wait"],
        nudge_route["group_interval"],
        nudge_route["repeat_interval"],
    ) == ("30s", "5m", "4h")
    assert receivers["ops"]["email_configs"][0]["to"] == "ops@example.com"


def _route_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for _, rule in _behavioral_alerts():
        labels = {"alertname": rule["alert"], **rule["labels"], "user_id": "u2"}
        if "plan" in rule["expr"]:
            labels["plan"] = "free"
        cases.append(("nudge", [f"{k}={v}" for k, v in labels.items()]))
    for rule in _alerts(SELF_MONITORING):
        labels = {"alertname": rule["alert"], **rule["labels"]}
        cases.append(("ops", [f"{k}={v}" for k, v in labels.items()]))
    cases.append(("ops", ["alertname=Watchdog"]))
    cases.append(("ops", ["alertname=HighLatency", "severity=critical", "user_id=u2"]))
    return cases


@pytest.mark.parametrize(
    ("receiver", "labels"), _route_cases(), ids=[c[1][0] for c in _route_cases()]
)
def test_alert_routes_to_the_right_receiver(
    amtool: str, alertmanager_copy: Path, receiver: str, labels: list[str]
) -> None:
    proc = _run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={alertmanager_copy}",
            f"--verify.receivers={receiver}",
            *labels,
        ]
    )
    output = _assert_ok(proc)
    assert proc.stdout.strip() == receiver, output
