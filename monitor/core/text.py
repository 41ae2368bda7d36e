"""Text that came from outside (CCE, receivers, config) and goes to a terminal, a log line or a label.

One rule for every place: control and format characters (Unicode categories Cc, Cf, Zl, Zp, Cs) — escape
sequences, NUL, line and paragraph separators, bidi overrides, zero-width and tag characters — are not shown
as they are: they could end a log line early, drive a terminal or make text read differently than it is.
"""

from __future__ import annotations

import unicodedata

__all__ = ["format_duration", "has_control", "printable"]

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control, format, separator or surrogate character."""
    return not text.isprintable() and any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in text)


def printable(text: str, replacement: str = " ") -> str:
    """``text`` with every such character replaced (fast when there is none)."""
    if text.isprintable():
        return text
    return "".join(replacement if unicodedata.category(ch) in _BAD_CATEGORIES else ch for ch in text)


def format_duration(seconds: float) -> str:
    """``45s``, ``7m``, ``2h 5m``: short, rounded down (ETAs and ages, wherever they are shown)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    hours, rest = divmod(whole, 3600)
    return f"{hours}h {rest // 60}m"
