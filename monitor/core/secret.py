"""A credential that cannot leak by accident: its repr and str are masked, it is not serializable.

:func:`redact` is the other half: text built from what a server sent (an error message that quotes a header)
may hold a secret or a piece of one; it is passed through ``redact`` with the secrets that were in play.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable

__all__ = ["Secret", "redact"]

_FRAGMENT = 12  # a run this long of a secret's characters, in order, counts as a piece of it


class Secret:
    """Wraps a secret string (token, SK, password, webhook secret). Read it with :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it goes on the wire or into a signature."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time: secrets are compared when checking bearer tokens.
        return isinstance(other, Secret) and hmac.compare_digest(other._value.encode(), self._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, secrets: Iterable[Secret | str]) -> str:
    """``text`` with every secret, and every piece of one at least 12 characters long, replaced by ``***``.

    A quoted header is often cut short (aiohttp quotes the first 100 bytes of a line it refuses), so whole-value
    replacement is not enough: every 12-character window of ``text`` that occurs in a secret is masked, and
    overlapping windows merge into one mask. Secrets shorter than that are replaced where they occur whole.
    """
    values = [s.reveal() if isinstance(s, Secret) else s for s in secrets]
    values = [v for v in values if v]
    if not values or not text:
        return text
    for value in values:
        if len(value) < _FRAGMENT:
            text = text.replace(value, "***")
    long_values = [v for v in values if len(v) >= _FRAGMENT]
    if not long_values or len(text) < _FRAGMENT:
        return text
    piece_sets = [_pieces(v) for v in long_values]
    masked = [False] * len(text)
    for i in range(len(text) - _FRAGMENT + 1):
        window = text[i : i + _FRAGMENT]
        if any(window in pieces for pieces in piece_sets):
            masked[i : i + _FRAGMENT] = [True] * _FRAGMENT
    out: list[str] = []
    for i, ch in enumerate(text):
        if not masked[i]:
            out.append(ch)
        elif i == 0 or not masked[i - 1]:
            out.append("***")
    return "".join(out)


@functools.lru_cache(maxsize=16)
def _pieces(value: str) -> frozenset[str]:
    # Cached: the same token is redacted from every failed poll, and a 16 KB one has 16,000 windows.
    return frozenset(value[i : i + _FRAGMENT] for i in range(len(value) - _FRAGMENT + 1))
