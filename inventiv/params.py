"""Strict parsing of the ids the REST API reads from paths and query strings.

One rule, documented in docs/errors.md ("Ids in paths and query strings"):

* an id **in a path** that is not a positive decimal integer our primary keys can hold
  (``1`` to ``2**63 - 1``, ASCII digits only) names an object that cannot exist: the answer is
  the same ``404 not_found`` as for a missing object or another organization's;
* an id **in a query string** (a filter) that is not such an integer is a malformed request:
  ``400 invalid_value`` with ``param`` naming the filter; so is a text filter holding a NUL
  character (PostgreSQL refuses it in a query).

``str.isdigit()`` and ``int()`` are not enough: ``"²".isdigit()`` is true while ``int("²")``
raises, ``int("٣")`` is 3, ``int("1_0")`` is 10 and ``int(" 7 ")`` is 7.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from inventiv.errors import ApplicationError, NotFound

# The largest value of a PostgreSQL bigint (Django's BigAutoField).
MAX_ID = 2**63 - 1
# The largest value of Django's (Positive)IntegerField on every database: a body field stored in
# one says so in its serializer, or a bigger number is a database error (a 500) instead of a 400.
MAX_POSITIVE_INT = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def id_or_none(raw: Any) -> int | None:
    """``raw`` as a primary key, or ``None`` when it cannot be one (see the module's rule)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw):
        value = int(raw)
    else:
        return None
    return value if 1 <= value <= MAX_ID else None


def path_id(raw: Any, *, message: str) -> int:
    """The id in a path, or ``NotFound(message)``: what cannot be an id names nothing."""
    value = id_or_none(raw)
    if value is None:
        raise NotFound(message)
    return value


def query_id(params: Any, name: str) -> int | None:
    """The id filter ``name`` of a query string (``None`` when absent or empty), or
    ``ApplicationError`` (``400 invalid_value``, ``param=name``) when it is malformed."""
    raw = params.get(name)
    if raw in (None, ""):
        return None
    value = id_or_none(raw)
    if value is None:
        raise ApplicationError(f"{name} must be an integer id between 1 and {MAX_ID}.", param=name)
    return value


def query_text(params: Any, name: str) -> str | None:
    """The text filter ``name`` of a query string (``None`` when absent or empty), or
    ``ApplicationError`` (``400 invalid_value``) when it holds a NUL character, which no
    stored text holds and PostgreSQL refuses in a query."""
    raw = params.get(name)
    if raw in (None, ""):
        return None
    if "\x00" in raw:
        raise ApplicationError(f"{name} must not contain NUL characters.", param=name)
    return str(raw)


class IdField(serializers.IntegerField):
    """An id in a request body or filter: ASCII digits (or a JSON integer), 1 to 2**63 - 1."""

    default_error_messages = {"invalid": f"An integer id between 1 and {MAX_ID} is required."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        value = id_or_none(data)
        if value is None:
            self.fail("invalid")
        return value
