"""Durations and sizes: the one place their notations are parsed (pure).

Settings write durations as ``500ms``, ``5s``, ``2m`` or ``1h`` (a bare number is seconds) and
sizes as ``65536``, ``64Ki`` or ``1G``; Subscription manifests write durations in ISO-8601, as
Kyma's do (``PT0.5S``). Each notation has one parser here, so a setting and a manifest field
never disagree on what a value means. Parsers raise ``ValueError`` with what was expected; the
caller names the variable or field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_ISO_FACTORS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def duration(text: str) -> float:
    """Seconds in a setting's duration such as ``500ms``, ``5s``, ``2m`` or ``1h``.

    Raises:
        ValueError: not such a duration (a bare number is one: seconds).
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            "expected a duration such as 500ms, 5s, 2m or 1h (bare numbers are seconds)"
        )
    return float(match[1]) * _DURATION_FACTORS[match[2] or "s"]


def iso_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT0.5S``, ``PT2M`` or ``P1DT2H``.

    Raises:
        ValueError: not such a duration.
    """
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"expected an ISO-8601 duration such as PT0.5S or PT2M, got {text!r}")
    return sum(float(v) * _ISO_FACTORS[k] for k, v in match.groupdict().items() if v)


def size(text: str) -> int:
    """Bytes in a size such as ``65536``, ``64Ki``, ``700Mi`` or ``1G``; ``-1`` means no limit.

    Raises:
        ValueError: not such a size.
    """
    if text.strip() == "-1":
        return -1
    match = _SIZE.match(text)
    if not match:
        raise ValueError("expected a byte size such as 65536, 64Ki, 700Mi or 1Gi (-1: no limit)")
    return int(match[1]) * _SIZE_FACTORS[match[2]]


def moment(text: str, now: float) -> float:
    """Unix seconds of a point in time as operators write it: an RFC 3339 time
    (``2026-12-01T10:00:00Z``, an offset or ``Z`` required) or a duration ago (``15m``, ``2h``,
    ``90s``, as :func:`duration` reads it), counted back from ``now``.

    Raises:
        ValueError: neither.
    """
    text = text.strip()
    try:
        return now - duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(
            "expected an RFC 3339 time with its offset (2026-12-01T10:00:00Z) or a duration"
            f" ago (15m, 2h), got {text[:80]!r}"
        )
    return parsed.timestamp()


def rfc3339(seconds: float) -> str:
    """Unix ``seconds`` as an RFC 3339 UTC time with milliseconds, as the API shows times."""
    shown = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return shown.replace("+00:00", "Z")
