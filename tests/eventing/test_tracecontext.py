"""Trace context values: what each spec admits (the same rule for a header and an extension)."""

from __future__ import annotations

import pytest

from eventing.events import tracecontext

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("extension", "value"),
    [
        ("traceparent", TRACEPARENT),
        ("traceparent", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later"),
        ("tracestate", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"),
        ("tracestate", ""),
        ("b3traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ],
)
def test_values_of_the_specs_have_no_problem(extension: str, value: str) -> None:
    assert tracecontext.problem(extension, value) is None


@pytest.mark.parametrize(
    ("extension", "value", "expected"),
    [
        ("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "all-zero"),
        ("traceparent", TRACEPARENT + "-more", "version 00 admits no other form"),
        ("traceparent", "not a traceparent", "expected a W3C traceparent"),
        ("tracestate", "a=1,a=2", "each key at most once"),
        ("tracestate", ",".join(f"k{i}=v" for i in range(33)), "at most 32 members"),
        ("b3sampled", "1 0", "visible ASCII"),
    ],
)
def test_other_values_have_their_problem_named(extension: str, value: str, expected: str) -> None:
    problem = tracecontext.problem(extension, value)
    assert problem is not None and expected in problem


def test_every_trace_header_comes_back_as_the_header_it_came_in() -> None:
    back = {
        tracecontext.HEADER_OF_EXTENSION[extension].lower(): extension
        for extension in tracecontext.EXTENSION_OF_HEADER.values()
    }
    assert back == tracecontext.EXTENSION_OF_HEADER
