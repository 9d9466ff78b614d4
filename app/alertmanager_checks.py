"""`nudge check --alertmanager-config FILE`: what in an Alertmanager config keeps Nudge from
working as configured, one line each with file and line.

Cancelling an email whose alert resolved (app/holds.py) and the resolved emails of
`nudge_send_resolved` rules both need Alertmanager to tell Nudge when an alert resolves:
a webhook to Nudge with `send_resolved: false` never does. (Unset, Alertmanager's default
for webhooks is true.)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

WEBHOOK_PATH = "/webhook"


def _mapping(node) -> dict:
    """A YAML mapping node as {key: value node}."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: value for key, value in node.value if isinstance(key, yaml.ScalarNode)}


def _scalar(node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def alertmanager_warnings(path: Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) for one Alertmanager config file."""
    try:
        root = yaml.compose(path.read_text())
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"], []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        return [f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"], []
    warnings: list[str] = []
    found = 0
    receivers = _mapping(root).get("receivers")
    for receiver in receivers.value if isinstance(receivers, yaml.SequenceNode) else []:
        fields = _mapping(receiver)
        name = _scalar(fields.get("name")) or "?"
        hooks = fields.get("webhook_configs")
        for hook in hooks.value if isinstance(hooks, yaml.SequenceNode) else []:
            settings = _mapping(hook)
            url = _scalar(settings.get("url")) or ""
            if not (name.lower() == "nudge" or urlsplit(url).path.rstrip("/").endswith(
                    WEBHOOK_PATH)):
                continue
            found += 1
            flag = settings.get("send_resolved")
            if flag is not None and (_scalar(flag) or "").strip().lower() == "false":
                warnings.append(
                    f"{path}:{flag.start_mark.line + 1}: warning: receiver {name!r}: "
                    f"send_resolved is false: Nudge never hears that an alert resolved, so it "
                    f"cannot cancel a waiting email or send a resolved email (set it to true)")
    if not found:
        warnings.append(f"{path}: warning: no webhook receiver for Nudge found (a receiver "
                        f"named 'nudge', or a webhook URL ending in {WEBHOOK_PATH})")
    return [], warnings
