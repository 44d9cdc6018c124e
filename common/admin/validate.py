"""Admin protocol field validators: one typed value per request or reply field.

Boundary: a parsed JSON object in, a checked Python value out, or `AdminError`
(BAD_FIELD, echoing the request's id) with a message naming the field.  Used by the
command table (`commands.FieldSpec.read`) and by the typed replies (`infos`).  Part of
the sans-IO admin codec (`vspc.common.admin`, which re-exports the public names).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from vspc.common.admin.errors import AdminError, ErrorCode
from vspc.common.admin.messages import id_of

__all__ = [
    "MAX_STR",
    "bad_field",
    "optional_bool",
    "optional_enum",
    "optional_int",
    "optional_str",
    "require_enum",
    "require_int",
    "require_str",
]

MAX_STR = 4096  # any string field without a limit of its own

_E = TypeVar("_E", bound=StrEnum)


def bad_field(request: Mapping[str, Any], message: str) -> AdminError:
    """A BAD_FIELD error for `request` (its id echoed), to raise."""
    return AdminError(ErrorCode.BAD_FIELD, message, id_of(request))


def require_str(
    request: Mapping[str, Any], name: str, *, max_length: int = MAX_STR, empty: bool = False
) -> str:
    """The string field `name`.

    Raises:
        AdminError: BAD_FIELD if missing, not a string, empty (unless `empty`) or
            longer than `max_length` characters.
    """
    if name not in request:
        raise bad_field(request, f"field {name!r} is required")
    value = request[name]
    if not isinstance(value, str):
        raise bad_field(request, f"field {name!r} must be a string")
    if not value and not empty:
        raise bad_field(request, f"field {name!r} must not be empty")
    if len(value) > max_length:
        raise bad_field(request, f"field {name!r} is longer than {max_length} characters")
    return value


def optional_str(
    request: Mapping[str, Any],
    name: str,
    default: str | None = None,
    *,
    max_length: int = MAX_STR,
) -> str | None:
    """The string field `name`, or `default` if absent or null (see `require_str`)."""
    if request.get(name) is None:
        return default
    return require_str(request, name, max_length=max_length, empty=True)


def require_int(
    request: Mapping[str, Any], name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """The integer field `name` (JSON true/false and 1.0 are not integers).

    Raises:
        AdminError: BAD_FIELD if missing, not an integer, or outside the bounds.
    """
    if name not in request:
        raise bad_field(request, f"field {name!r} is required")
    value = request[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(request, f"field {name!r} must be an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        joiner = " and" if low and high else ""
        raise bad_field(request, f"field {name!r} must be{low}{joiner}{high}, got {value}")
    return value


def optional_int(
    request: Mapping[str, Any],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """The integer field `name`, or `default` if absent or null (see `require_int`)."""
    if request.get(name) is None:
        return default
    return require_int(request, name, minimum=minimum, maximum=maximum)


def optional_bool(request: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """The boolean field `name`, or `default` if absent or null.

    Raises:
        AdminError: BAD_FIELD if present and not a JSON boolean (0/1 are not booleans).
    """
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_field(request, f"field {name!r} must be true or false")
    return value


def optional_enum(
    request: Mapping[str, Any], name: str, enum: type[_E], default: _E | None = None
) -> _E | None:
    """The field `name` as a member of `enum`, or `default` if absent or null.

    Raises:
        AdminError: BAD_FIELD if present and not one of the enum's values.
    """
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    choices = ", ".join(member.value for member in enum)
    raise bad_field(request, f"field {name!r} must be one of: {choices}")


def require_enum(request: Mapping[str, Any], name: str, enum: type[_E]) -> _E:
    """The field `name` as a member of `enum`; it must be present and not null.

    Raises:
        AdminError: BAD_FIELD if missing, null, or not one of the enum's values.
    """
    value = optional_enum(request, name, enum)
    if value is None:
        raise bad_field(request, f"field {name!r} is required")
    return value
