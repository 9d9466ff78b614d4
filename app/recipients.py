"""Who receives an email: labels → an address, plus the live user record for the template.

Sources, in the configured order: an address label on the alert, a static map file, the
user directory over HTTP. The first address found wins. The `user` record in the template
is the static map's attributes overlaid with the directory's (live) record.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.directory import DirectoryLookup

# Directory sources that mean "we could not ask", as opposed to a definite answer.
UNREACHABLE = ("unavailable", "invalid")


@dataclass(frozen=True)
class RecipientChoice:
    address: str | None
    source: str | None  # "label" | "static_map" | "directory"
    user: dict
    retry_later: bool  # no address yet, but only because the directory could not be asked
    reason: str  # why there is no address, or where it came from


def choose_recipient(
    order: tuple[str, ...],
    label_address: str | None,
    static: DirectoryLookup | None,
    directory: DirectoryLookup | None,
) -> RecipientChoice:
    candidates = {
        "label": label_address or None,
        "static_map": static.email if static else None,
        "directory": directory.email if directory else None,
    }
    user: dict = {}
    if static and static.record:
        user.update(static.record)
    if directory and directory.record:
        user.update(directory.record)

    for source in order:
        if candidates[source]:
            return RecipientChoice(candidates[source], source, user, False, f"address from {source}")

    # Only worth waiting for when the directory is one of the address sources.
    directory_down = (
        "directory" in order and directory is not None and directory.source in UNREACHABLE
    )
    tried = []
    if "label" in order:
        tried.append("no address label")
    if "static_map" in order and static is not None:
        tried.append("static map entry has no address" if static.record is not None
                     else "not in the static map")
    if "directory" in order and directory is not None:
        if directory_down:
            tried.append(f"directory unreachable ({directory.error or directory.source})")
        elif directory.source == "not_found":
            tried.append("directory: user not found")
        else:
            tried.append("directory record has no address")
    if "directory" in order and directory is None:
        tried.append("no directory configured")
    return RecipientChoice(None, None, user, directory_down, "no address: " + "; ".join(tried))


# Where a lookup gave a record (as opposed to not found, or no answer).
RECORD_SOURCES = ("fresh", "cache", "stale")


def record_sources_by_address(
    order: tuple[str, ...],
    static: DirectoryLookup | None,
    directory: DirectoryLookup | None,
) -> tuple[list[str], list[str]]:
    """The address sources in `order` that gave a record for the user: (those whose record
    holds an address, those whose record has none). A source whose records never hold one is
    a mistake in the setup (a wrong field name), not every user's (app/circuit.py)."""
    with_address: list[str] = []
    without_address: list[str] = []
    for source, lookup in (("static_map", static), ("directory", directory)):
        if source in order and lookup is not None and lookup.source in RECORD_SOURCES \
                and lookup.record is not None:
            (with_address if lookup.email else without_address).append(source)
    return with_address, without_address
