"""The read-only listings behind `nudge deliveries|decisions|suppress list`, for every engine.

The statements are plain SQL that SQLite and PostgreSQL both take; only the parameter
placeholder differs, so an engine supplies `PLACEHOLDER` and `_rows` (run one query, return
dicts) and inherits the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from app.clock import iso
from app.store.base import QUEUED, STATUSES, RetrySelection, chunks


class Listings:
    PLACEHOLDER = "?"

    def _rows(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _filtered(self, query: str, filters: dict[str, Any], limit: int | None
                  ) -> tuple[str, list]:
        mark = self.PLACEHOLDER
        where = [f"{column} = {mark}" for column, value in filters.items() if value is not None]
        params = [value for value in filters.values() if value is not None]
        query += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit:
            query += f" LIMIT {mark}"
            params.append(int(limit))
        return query, params

    def list_deliveries(self, *, user: str | None = None, rule: str | None = None,
                        status: str | None = None, limit: int | None = None
                        ) -> list[dict[str, Any]]:
        rows = self._rows(*self._filtered(
            "SELECT id, created_at, rule, user_id, template, kind, status, attempts, recipient, "
            "next_attempt_at, last_error, sent_at, starts_at, note FROM deliveries",
            {"user_id": user, "rule": rule, "status": status}, limit))
        for row in rows:
            row["next_attempt_at"] = iso(row["next_attempt_at"]) if row["status"] == QUEUED else None
        return rows

    def list_decisions(self, *, user: str | None = None, rule: str | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]:
        return self._rows(*self._filtered(
            "SELECT id, created_at, notification_id, rule, user_id, alert_status, starts_at, "
            "outcome, reason, detail, delivery_id, "
            # What became of the email since: held back, sent, cancelled... and why.
            "(SELECT status FROM deliveries WHERE deliveries.id = decisions.delivery_id) "
            "AS delivery_status, "
            "(SELECT note FROM deliveries WHERE deliveries.id = decisions.delivery_id) "
            "AS delivery_note FROM decisions",
            {"user_id": user, "rule": rule}, limit))

    def list_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT attempt, started_at, finished_at, outcome, recipient, error FROM attempts "
            f"WHERE delivery_id = {self.PLACEHOLDER} ORDER BY id", [delivery_id])

    def list_delivery_events(self, delivery_id: int) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT created_at, event, reason, detail FROM delivery_events "
            f"WHERE delivery_id = {self.PLACEHOLDER} ORDER BY id", [delivery_id])

    def list_suppressions(self, user_id: str | None = None) -> list[dict[str, Any]]:
        if user_id is None:
            return self._rows("SELECT * FROM suppressions ORDER BY created_at, user_id, scope", [])
        return self._rows(f"SELECT * FROM suppressions WHERE user_id = {self.PLACEHOLDER} "
                          "ORDER BY created_at, scope", [user_id])

    def retryable(self, selection: RetrySelection, limit: int | None = None
                  ) -> list[dict[str, Any]]:
        mark = self.PLACEHOLDER
        statuses = [s for s in selection.statuses if s in STATUSES]
        # One whose alert resolved since is not wanted any more (cancel on resolve).
        where = [f"status IN ({', '.join([mark] * len(statuses))})", "pruned_at IS NULL",
                 "resolved_at IS NULL"]
        params: list[Any] = list(statuses)
        if selection.ids:
            where.append(f"id IN ({', '.join([mark] * len(selection.ids))})")
            params.extend(int(i) for i in selection.ids)
        for column, value in (("rule", selection.rule), ("user_id", selection.user)):
            if value is not None:
                where.append(f"{column} = {mark}")
                params.append(value)
        # updated_at is when a failed or dead delivery got that status; ISO text sorts as time.
        if selection.since is not None:
            where.append(f"updated_at >= {mark}")
            params.append(iso(selection.since))
        if selection.until is not None:
            where.append(f"updated_at < {mark}")
            params.append(iso(selection.until))
        query = ("SELECT id, created_at, updated_at, rule, user_id, template, kind, status, "
                 "attempts, recipient, last_error FROM deliveries WHERE " + " AND ".join(where)
                 + " ORDER BY id")
        if limit:
            query += f" LIMIT {mark}"
            params.append(int(limit))
        return self._rows(query, params) if statuses else []

    def user_suppressions(self, user_id: str) -> tuple[set[str], set[str]]:
        return self.users_suppressions([user_id])[user_id]

    def users_suppressions(self, user_ids: Iterable[str]) -> dict[str, tuple[set[str], set[str]]]:
        wanted = sorted(set(user_ids))
        found: dict[str, tuple[set[str], set[str]]] = {user: (set(), set()) for user in wanted}
        for batch in chunks(wanted, 500):
            marks = ", ".join([self.PLACEHOLDER] * len(batch))
            rows = self._rows(
                f"SELECT 'scope' AS kind, user_id, scope AS name FROM suppressions "
                f"WHERE user_id IN ({marks}) UNION ALL SELECT 'category', user_id, category "
                f"FROM category_suppressions WHERE user_id IN ({marks})", [*batch, *batch])
            for row in rows:
                scopes, categories = found[row["user_id"]]
                (scopes if row["kind"] == "scope" else categories).add(row["name"])
        return found

    def list_category_suppressions(self, user_id: str | None = None) -> list[dict[str, Any]]:
        if user_id is None:
            return self._rows("SELECT * FROM category_suppressions "
                              "ORDER BY created_at, user_id, category", [])
        return self._rows("SELECT * FROM category_suppressions WHERE user_id = "
                          f"{self.PLACEHOLDER} ORDER BY created_at, category", [user_id])

    def latest_annotations_by_rule(self, user_id: str) -> dict[str, dict[str, str]]:
        mark = self.PLACEHOLDER
        rows = self._rows(
            "SELECT rule, alert FROM deliveries WHERE id IN (SELECT MAX(id) FROM deliveries "
            f"WHERE user_id = {mark} GROUP BY rule)", [user_id])
        found = {}
        for row in rows:
            try:
                annotations = json.loads(row["alert"]).get("annotations") or {}
            except (ValueError, AttributeError):
                annotations = {}  # a stored alert is always a JSON object; never fail a page
            found[row["rule"]] = {str(k): str(v) for k, v in annotations.items()}
        return found
