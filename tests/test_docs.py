"""Everything a user touches is documented: commands, options, config keys, env vars, metrics."""

from __future__ import annotations

import re

import click
import pytest
import yaml

from app import metrics
from app.cli import main
from app.config import DEFAULTS, ENV_OVERRIDES
from app.rendering import FILTERS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "rules":
            keys.extend(flatten(value, f"{prefix}{key}."))
        else:
            keys.append(prefix + key)
    return keys


def commands(group: click.Group, prefix: str = "nudge"):
    for name, command in group.commands.items():
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from commands(command, path)


@pytest.mark.parametrize("path, command", list(commands(main)), ids=lambda v: str(v))
def test_every_command_and_option_is_in_the_readme(path, command):
    assert f"`{path}" in README, f"{path} is not documented"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[-1] in README, f"{path} {param.opts[-1]} is not documented"


@pytest.mark.parametrize("key", flatten(DEFAULTS))
def test_every_config_key_is_in_the_readme_and_in_deploy_nudge_yml(key):
    assert f"`{key}`" in README or f"`{key}`," in README, f"config key {key} not in README"
    shipped = yaml.safe_load((ROOT / "deploy" / "nudge.yml").read_text())
    node = shipped
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key} missing from deploy/nudge.yml"
        node = node[part]


@pytest.mark.parametrize("name", [*ENV_OVERRIDES, "NUDGE_CONFIG", "NUDGE_DIRECTORY_TOKEN",
                                  "NUDGE_DIRECTORY_API_KEY", "PROMETHEUS_MULTIPROC_DIR",
                                  "NUDGE_LOG_LEVEL"])
def test_every_environment_variable_is_in_the_readme(name):
    assert f"`{name}`" in README


def test_every_env_var_the_code_reads_is_listed():
    read = set()
    for path in (ROOT / "app").glob("*.py"):
        read |= set(re.findall(r"[\"'](NUDGE_[A-Z_]+|PROMETHEUS_MULTIPROC_DIR)[\"']",
                               path.read_text()))
    missing = {name for name in read if f"`{name}`" not in README}
    assert not missing


@pytest.mark.parametrize("metric", [
    m for m in vars(metrics).values() if hasattr(m, "_name")
], ids=lambda m: m._name)
def test_every_metric_is_in_the_readme(metric):
    name = f"nudge_{metric._name.removeprefix('nudge_')}"
    documented = name + ("_total" if metric._type == "counter" else "")
    assert f"`{documented}`" in README


@pytest.mark.parametrize("name", ["nudge_queue_depth", "nudge_queue_oldest_age_seconds"])
def test_queue_gauges_are_in_the_readme(name):
    assert f"`{name}`" in README


@pytest.mark.parametrize("name", ["labels", "annotations", "alert", "rule", "user_id", "user",
                                  "recipient", "unsubscribe_url", "external_url", "now"])
def test_every_template_context_name_is_in_the_readme(name):
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_filter_is_in_the_readme(name):
    assert f"`{name}" in README


def test_make_targets_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z][a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} is not a target"


# --- settings are declared once (app/config.py SETTINGS) ----------------------------------------


def test_the_readme_configuration_table_is_the_declared_one():
    from app.config import markdown_table

    assert markdown_table() in README, (
        "README's configuration table differs from app/config.py SETTINGS: replace it with the "
        "output of: .venv/bin/python -c 'from app.config import markdown_table; "
        "print(markdown_table())'")


@pytest.mark.parametrize("setting", [s for s in __import__("app.config", fromlist=["x"]).SETTINGS
                                     if s.env], ids=lambda s: s.env)
def test_every_environment_variable_row_names_its_key(setting):
    assert re.search(rf"^\| `{setting.env}` \| `{re.escape(setting.key)}`", README, re.M), (
        f"{setting.env} should be documented as overriding `{setting.key}`")


def test_deploy_nudge_yml_comments_every_key():
    lines, stack = {}, []  # dotted key -> its line; (indent, name) of the enclosing keys
    for line in (ROOT / "deploy" / "nudge.yml").read_text().splitlines():
        match = re.match(r"^(\s*)([a-z_]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        lines[".".join(name for _, name in stack)] = line
    for key in flatten(DEFAULTS):
        assert key in lines and "#" in lines[key], f"deploy/nudge.yml: {key} without a comment"
