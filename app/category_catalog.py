"""Which categories the preference page offers one user: those of the rules in `rules_dir`
that send email (so a person can stop a kind of email before receiving it), then those of the
emails this user was sent (so a category stays listed after its rule was renamed or removed,
and the page works where the rule files are not at hand). The rule files are read again when
they change."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from app.categories import (
    CATEGORY_ANNOTATION,
    TITLE_ANNOTATION,
    category_problem,
    title_problem,
)
from app.config import Config
from app.rules import load_rule_set
from app.store import Store
from app.template_set import files_signature


class CategoryCatalog:
    def __init__(self, config: Config):
        self.config = config
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._rules: list[tuple[str, dict[str, str]]] = []

    def rule_annotations(self) -> list[tuple[str, dict[str, str]]]:
        """(alertname, annotations) of every rule in `rules_dir` that names a template."""
        signature = files_signature(self.config.rules_dir)
        with self._lock:
            if signature != self._signature:
                rules = load_rule_set(self.config.rules_dir).rules
                self._rules = [(rule.alert, dict(rule.annotations)) for rule in rules
                               if self._sends_email(rule.alert, rule.labels)
                               and _fixed(rule.annotations)]
                self._signature = signature
            return list(self._rules)

    def _sends_email(self, alert: str, labels: Mapping[str, str]) -> bool:
        override = self.config.rule_overrides.get(alert)
        return bool(labels.get(self.config.template_label) or (override and override.template))

    def for_user(self, store: Store, user_id: str) -> list[tuple[str, dict[str, str]]]:
        """(alertname, annotations) of the rules, then of what this user was sent: in this
        order, so a title in the rule files wins over an older one in a sent email."""
        return [*self.rule_annotations(), *store.latest_annotations_by_rule(user_id).items()]


def _fixed(annotations: Mapping[str, str]) -> bool:
    """A rule whose category or title is a template (which `nudge check` reports) is known
    only from the emails it sent: its text in the file is not what recipients get."""
    return not ((CATEGORY_ANNOTATION in annotations
                 and category_problem(annotations[CATEGORY_ANNOTATION]))
                or (TITLE_ANNOTATION in annotations and title_problem(annotations[TITLE_ANNOTATION])))
