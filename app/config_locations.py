"""Where each nudge.yml key was written: `FILE:LINE`, or the NUDGE_* variable that set it.

Every config problem and warning is written as `SOURCE: KEY: what is wrong` (app/config.py,
app/checks.py, app/secret_checks.py). `KeyLocations.locate` turns that into
`SOURCE:LINE: KEY: what is wrong`, the form `nudge check` uses for rule files, in one place:
no check has to know about lines. A value that came from an environment variable names the
variable instead (`environment NUDGE_RETENTION: retention: ...`), since the file's line would
point at a value that is not the one in use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

_KEY = re.compile(r"[^\s:]+")


def key_lines(text: str) -> dict[str, int]:
    """Dotted key path -> 1-based line of that key in the YAML `text` (empty if unreadable)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue  # merge keys and complex keys: no line to point at
            dotted = f"{prefix}{key_node.value}"
            lines[dotted] = key_node.start_mark.line + 1  # a repeated key: the last one wins
            walk(value_node, dotted + ".")

    walk(root, "")
    return lines


@dataclass(frozen=True)
class KeyLocations:
    source: str  # the config file's path, or "defaults"
    lines: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # dotted key -> NUDGE_* variable

    def where(self, dotted: str) -> str:
        """`FILE:LINE`, `environment NUDGE_X` or just `FILE` for `dotted`: a key that is not
        in the file is located at its closest enclosing section that is."""
        if dotted in self.env:
            return f"environment {self.env[dotted]}"
        key = dotted
        while key:
            if key in self.lines:
                return f"{self.source}:{self.lines[key]}"
            key = key.rpartition(".")[0]
        return self.source

    def locate(self, problem: str, *, warning: bool = False) -> str:
        """`SOURCE: KEY...` as `WHERE: KEY...` (`WHERE: warning: KEY...` for a warning);
        anything else is left as it is."""
        prefix = f"{self.source}: "
        if not problem.startswith(prefix):
            return problem
        rest = problem[len(prefix):]
        match = _KEY.match(rest)
        where = self.where(match.group(0)) if match else self.source
        return f"{where}: {'warning: ' if warning else ''}{rest}"


def data_keys(data: Mapping, prefix: str = "") -> set[str]:
    """Every dotted key path of a nested mapping (values given in code, not in the file)."""
    keys: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, Mapping):
            keys |= data_keys(value, dotted + ".")
    return keys
