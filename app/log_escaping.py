"""Log lines that a sender cannot forge.

Alert payloads (receiver names, group keys, label values, user ids) end up in log messages.
A CR or LF in one would start what looks like a new, separate log line, with any timestamp
and level the sender likes; an escape sequence could rewrite the operator's terminal. Every
message Nudge logs goes through `escape_controls`: control characters (and the Unicode line
separators) are written as visible escapes, so one record is always one line.
"""

from __future__ import annotations

import logging
import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\t"}  # a tab cannot start a line: kept as it is


def _escape(code: int) -> str:
    character = chr(code)
    return _NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


# C0 controls, DEL, C1 controls (NEL among them), and the Unicode line/paragraph separators.
_TABLE = {code: _escape(code)
          for code in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


# What `_TABLE` changes: most messages have none, and a search is far cheaper than translate.
_NEEDS_ESCAPING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    if _NEEDS_ESCAPING.search(text) is None:
        return text
    return text.translate(_TABLE)


class EscapeControlCharacters(logging.Filter):
    """A handler filter: the record's message, arguments filled in, with controls escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def escape_handlers(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
            handler.addFilter(EscapeControlCharacters())
