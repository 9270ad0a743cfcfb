"""What the commands' arguments may be, checked before anything is sent: a bad time or
subscription name is a usage error (exit 2) that says what was expected, not a 400 later."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click

from eventing import units

F = TypeVar("F", bound=Callable[..., Any])

_SUBSCRIPTION = re.compile(r"^[^/\s]+/[^/\s]+$")


class Moment(click.ParamType[str, Any]):
    """An RFC 3339 time or a duration ago (``15m``, ``2h``), as :func:`eventing.units.moment`
    reads it; converted here to the RFC 3339 time it stands for, so a page fetched a minute
    later asks for the same window."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return units.rfc3339(units.moment(str(value), time.time()))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SubscriptionName(click.ParamType[str, Any]):
    """``namespace/name``."""

    name = "NS/NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not _SUBSCRIPTION.match(str(value)):
            self.fail(f"expected namespace/name, e.g. default/orders, got {value!r}", param, ctx)
        return str(value)


MOMENT = Moment()
SUBSCRIPTION = SubscriptionName()


def subscription_path(subscription: str) -> str:
    """``/subscriptions/{ns}/{name}`` of the API, each part quoted."""
    namespace, _, name = subscription.partition("/")
    return f"/subscriptions/{quote(namespace, safe='')}/{quote(name, safe='')}"


def json_option(command: F) -> F:
    """``--json``: the API's document as it came, for scripts (the human form may change)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the API's JSON document instead of a table."
    )(command)


def one_of(**given: object) -> str:
    """The one option of ``given`` (name → value) that was set.

    Raises:
        click.UsageError: none or several were.
    """
    chosen = [name for name, value in given.items() if value not in (None, (), False)]
    if len(chosen) != 1:
        names = " | ".join(f"--{name}" for name in given)
        found = f"got {', '.join('--' + name for name in chosen)}" if chosen else "got none"
        raise click.UsageError(f"expected exactly one of {names}; {found}")
    return chosen[0]
