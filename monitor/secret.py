"""A credential that cannot leak by accident: its repr and str are masked, it is not serializable."""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


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
