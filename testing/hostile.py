"""Hostile HTTP requests for the proxy: a seeded generator of malformed, oversized and odd ones.

Why a generator of exact bytes: most of what a hostile client sends (invalid UTF-8 in headers,
conflicting framing, bodies cut short, garbage request lines) cannot be produced with
``requests`` or ``http.client``, so every case is the raw request as it goes on the wire, and
:mod:`testing.fuzzing` sends it over a plain socket.

Every case knows what a correct proxy does with it (:attr:`Case.expect`) and how many events a
2xx answer means were stored (:attr:`Case.events`); each event's id carries a marker naming the
case (:func:`marker`), so what JetStream holds can be traced back to the request that put it
there. ``case(seed, index)`` is a pure function: any case of a run can be rebuilt on its own
from the printed seed and its index, to replay one failure.

Why one module over 400 lines: it is a catalogue, one builder per family of requests (19, in
:data:`_FAMILIES` with their weights), each 6 to 100 lines and sharing the raw-request and
valid-event helpers at the top; a case is read and replayed family by family, never across them.

It must not guess: a case whose right answer depends on details outside the proxy's contract
(how the HTTP server treats duplicated headers, say) expects ``ANY`` and is still checked for
5xx, hangs and stored events.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from proxy.guards import MAX_DATA_DEPTH

ACCEPT: Final = "accept"  #: a 2xx, and every event of the request stored
REJECT: Final = "reject"  #: a 4xx (or no answer to broken framing), and nothing stored
ANY: Final = "any"  #: either; still no 5xx, no hang, and stored events only for a 2xx

KEEPALIVE: Final = "keepalive"  #: well framed: may share a keep-alive connection
ALONE: Final = "alone"  #: on a connection of its own, closed after the answer
TRUNCATED: Final = "truncated"  #: sent, then the write side is shut: the body never completes
TRICKLE: Final = "trickle"  #: sent a few bytes at a time with pauses (a slow client)
#: headers at once, then the body a few bytes at a time, below the proxy's minimum body rate,
#: until an answer comes (a slow-body attack: the proxy must answer 408, not wait)
SLOW_BODY: Final = "slow-body"

#: CPython refuses integer literals with more digits than this (``sys.int_info``).
MAX_INT_DIGITS: Final = 4300

_MARKER = re.compile(
    r"(?<![0-9a-f])([0-9a-f]{8})-([0-9a-f]{4})-4f00-8000-([0-9a-f]{12})(?![0-9a-f])"
)
_SOURCES = ("fuzz", "/sensors/7", "urn:fuzz:1", "https://example.com/fuzz", "fuzz-ü")
_TYPES = ("order.created.v1", "sap.kyma.custom.fuzz.order.created.v1", "ünï.cöde.v1", "a.b.c.v2")
_APPS = ("fuzzapp", "commerce", "app-1")
_TIME = "2020-04-02T21:37:00Z"
_INVALID_UTF8 = (
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
)


@dataclass(frozen=True, slots=True)
class Case:
    """One request, exactly as sent, and what a correct proxy does with it."""

    index: int
    kind: str  #: the family, for the report
    request: bytes
    expect: str = REJECT
    events: int = 0  #: events a 2xx answer means were stored
    send: str = KEEPALIVE
    head: bool = False  #: a HEAD request: the answer has no body
    trickle: tuple[int, float] = (0, 0.0)  #: bytes per piece and pause, for TRICKLE, SLOW_BODY


def marker(run: int, index: int, item: int = 0) -> str:
    """The event id of event ``item`` of case ``index``: a UUID, as legacy ``event-id`` needs."""
    return f"{run & 0xFFFFFFFF:08x}-{item:04x}-4f00-8000-{index:012x}"


def parse_marker(event_id: str, run: int) -> tuple[int, int] | None:
    """(case index, item) of a stored event id of run ``run``, or None if it carries no marker."""
    for found in _MARKER.finditer(event_id):
        if int(found[1], 16) == run & 0xFFFFFFFF:
            return int(found[3], 16), int(found[2], 16)
    return None


def case(seed: int, index: int, limit: int) -> Case:
    """Case ``index`` of the run ``seed``; ``limit`` is the proxy's ``MAX_REQUEST_SIZE``."""
    rng = random.Random(f"{seed}/{index}")
    family = rng.choices(_FAMILIES, weights=[weight for _, weight in _FAMILIES])[0][0]
    return _BUILDERS[family](_Context(rng, seed, index, limit))


@dataclass(frozen=True, slots=True)
class _Context:
    rng: random.Random
    run: int
    index: int
    limit: int

    def id(self, item: int = 0) -> str:
        return marker(self.run, self.index, item)

    def case(self, kind: str, request: bytes, **fields: Any) -> Case:
        return Case(self.index, kind, request, **fields)


# --- raw requests --------------------------------------------------------------------------------

Header = tuple[str | bytes, str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def http_request(
    method: str | bytes,
    target: str | bytes,
    headers: list[Header],
    body: bytes = b"",
    *,
    length: bool = True,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A raw HTTP/1.1 request; ``length`` adds the body's Content-Length."""
    lines = [b" ".join([_bytes(method), _bytes(target), version]), b"Host: 127.0.0.1"]
    lines += [_bytes(name) + b": " + _bytes(value) for name, value in headers]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(body: bytes, rng: random.Random, *, finish: bool = True) -> bytes:
    """``body`` in chunked transfer coding, in chunks of random sizes."""
    out, position = bytearray(), 0
    while position < len(body):
        size = rng.randint(1, 8192)
        piece = body[position : position + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        position += size
    if finish:
        out += b"0\r\n\r\n"
    return bytes(out)


def _post(target: str | bytes, headers: list[Header], body: bytes) -> bytes:
    return http_request("POST", target, headers, body)


# --- valid events --------------------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int = 3) -> Any:
    """A random JSON value: unicode and escapes in strings, big but legal integers, floats."""
    pick = rng.randrange(9 if depth > 0 else 6)
    if pick == 0:
        return rng.choice(
            ["", "ä€😀", '\u0000\u001f"\\/', "\u2028\u2029", "x" * rng.randint(1, 300)]
        )
    if pick == 1:
        return rng.choice([0, -1, 2**31, -(2**63), 10 ** rng.randint(20, 4000)])
    if pick == 2:
        return rng.choice([0.5, -1e-300, 1.7976931348623157e308, 5e-324])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick in (4, 5):
        return rng.choice(["plain", {"orderId": rng.randint(0, 10**9)}])
    if pick in (6, 7):
        return {f"k{i}": _json_value(rng, depth - 1) for i in range(rng.randint(0, 4))}
    return [_json_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]


def _event(ctx: _Context, item: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid structured event with the case's marker as id."""
    rng = ctx.rng
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": ctx.id(item),
        "source": rng.choice(_SOURCES),
        "type": rng.choice(_TYPES),
    }
    if rng.random() < 0.5:
        event["datacontenttype"] = rng.choice(["application/json", "text/json; charset=utf-8"])
    if rng.random() < 0.3:
        event["time"] = rng.choice([_TIME, "2024-02-29T23:59:59.123456789+05:30"])
    if rng.random() < 0.3:
        event["subject"] = "ünïcode \t subject"
    if rng.random() < 0.3:
        event["fuzzext"] = rng.choice(["x", 7, True, -(2**31)])
    data = _json_value(rng)
    if data is not None:
        event["data"] = data
    return {**event, **fields}


def _dump(document: Any, rng: random.Random) -> bytes:
    return json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()


def _structured_headers(
    rng: random.Random, media: str = "application/cloudevents+json"
) -> list[Header]:
    suffix = rng.choice(["", "; charset=utf-8", ";charset=UTF-8", '; charset="utf-8"; x=";"'])
    return [("Content-Type", rng.choice([media, media.upper(), media.title()]) + suffix)]


def _binary_headers(ctx: _Context, **overrides: str | bytes | None) -> list[Header]:
    """Binary-mode headers of a valid event; an override of None leaves that header out."""
    rng = ctx.rng
    values: dict[str, str | bytes | None] = {
        "ce-specversion": "1.0",
        "ce-id": ctx.id(),
        "ce-source": quote(rng.choice(_SOURCES), safe="/:"),
        "ce-type": quote(rng.choice(_TYPES), safe="."),
        "Content-Type": rng.choice(
            ["application/json", "text/plain; charset=utf-8", "application/octet-stream", None]
        ),
    }
    if rng.random() < 0.3:
        values["ce-time"] = _TIME
    if rng.random() < 0.3:
        values["ce-fuzzext"] = quote("ünï cöde", safe="")
    if rng.random() < 0.2:
        values["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    values.update(overrides)
    return [(name, value) for name, value in values.items() if value is not None]


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def _valid_binary(ctx: _Context) -> Case:
    rng = ctx.rng
    body = rng.choice([b"", _dump(_json_value(rng), rng), _random_bytes(rng, rng.randint(1, 2000))])
    return ctx.case(
        "valid-binary", _post("/publish", _binary_headers(ctx), body), expect=ACCEPT, events=1
    )


def _valid_structured(ctx: _Context) -> Case:
    body = _dump(_event(ctx), ctx.rng)
    request = _post("/publish", _structured_headers(ctx.rng), body)
    return ctx.case("valid-structured", request, expect=ACCEPT, events=1)


def _valid_batch(ctx: _Context) -> Case:
    count = ctx.rng.randint(1, 20)
    body = _dump([_event(ctx, item) for item in range(count)], ctx.rng)
    headers = _structured_headers(ctx.rng, "application/cloudevents-batch+json")
    return ctx.case("valid-batch", _post("/publish", headers, body), expect=ACCEPT, events=count)


def _legacy_body(ctx: _Context, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event-type": ctx.rng.choice(["order.created", "Account.Order.Created", "a.b.c.d"]),
        "event-type-version": ctx.rng.choice(["v1", "v2"]),
        "event-time": _TIME,
        "event-id": ctx.id(),
        "data": {"payload": _json_value(ctx.rng)},
    }
    return {**body, **fields}


def _valid_legacy(ctx: _Context) -> Case:
    app = ctx.rng.choice(_APPS)
    body = _dump(_legacy_body(ctx), ctx.rng)
    headers: list[Header] = [("Content-Type", ctx.rng.choice(["application/json", "text/plain"]))]
    return ctx.case(
        "valid-legacy", _post(f"/{app}/v1/events", headers, body), expect=ACCEPT, events=1
    )


# --- hostile bodies ------------------------------------------------------------------------------


def _json_target(ctx: _Context) -> tuple[str, list[Header], Callable[[Any], bytes]]:
    """Where a JSON document goes: (path, headers, wrap) for structured, batch or legacy mode.

    ``wrap`` turns a data value into a complete body around it.
    """
    rng = ctx.rng
    mode = rng.choice(["structured", "batch", "legacy"])
    if mode == "legacy":
        return (
            f"/{rng.choice(_APPS)}/v1/events",
            [("Content-Type", "application/json")],
            lambda data: _raw_json(_legacy_body(ctx, data="\0DATA\0"), data),
        )
    if mode == "batch":
        return (
            "/publish",
            _structured_headers(rng, "application/cloudevents-batch+json"),
            lambda data: b"[" + _raw_json(_event(ctx, data="\0DATA\0"), data) + b"]",
        )
    return (
        "/publish",
        _structured_headers(rng),
        lambda data: _raw_json(_event(ctx, data="\0DATA\0"), data),
    )


def _raw_json(document: dict[str, Any], data: Any) -> bytes:
    """``document`` serialised, its data placeholder replaced by raw JSON text ``data``."""
    text = json.dumps(document).encode()
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return text.replace(b'"\\u0000DATA\\u0000"', raw)


def _malformed_json(ctx: _Context) -> Case:
    """JSON that no parser may accept: cut short, trailing bytes, raw control characters …"""
    rng = ctx.rng
    path, headers, wrap = _json_target(ctx)
    body = wrap({"n": 1})
    mutation = rng.randrange(8)
    if mutation == 0:
        body = body[: rng.randint(1, len(body) - 1)]
    elif mutation == 1:
        body += rng.choice([b"x", b",", b"}", b"]", b"\x00", b"{}", b" true"])
    elif mutation == 2:
        body = body.replace(b'"', b"'")
    elif mutation == 3:
        body = body.replace(b"-4f00-", b"-4f00\x01-", 1)
    elif mutation == 4:
        body = body.replace(b"{", b"{/* comment */", 1)
    elif mutation == 5:
        body = body.replace(b":", b"=", 1)
    elif mutation == 6:
        body = rng.choice([b"", b" ", b"null", b"[]", b"{}", b"[1, 2]", b'"event"', b"42"])
    else:
        body = body.replace(b'"', b"", 1)
    return ctx.case("json-malformed", _post(path, headers, body))


def _nested(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _deep_json(ctx: _Context) -> Case:
    """Data nested deep: a little, around the proxy's limit, near CPython's recursion limit, and
    far beyond (100,000 levels do not fit in ``MAX_REQUEST_SIZE``: 413)."""
    rng = ctx.rng
    depth = rng.choice(
        [
            rng.randint(1, 50),
            rng.randint(MAX_DATA_DEPTH - 5, MAX_DATA_DEPTH + 5),
            rng.randint(900, 1100),
            rng.randint(2000, 30000),
            100_000,
        ]
    )
    path, headers, wrap = _json_target(ctx)
    body = wrap(_nested(depth, rng))
    fits = len(body) <= ctx.limit
    expect = ACCEPT if fits and depth <= MAX_DATA_DEPTH else REJECT
    events = 1 if expect == ACCEPT else 0
    send = KEEPALIVE if fits else ALONE
    return ctx.case(
        "json-deep", _post(path, headers, body), expect=expect, events=events, send=send
    )


def _huge_number(ctx: _Context) -> Case:
    """Numbers JSON may spell but no event can hold (inf, NaN, beyond CPython's digit limit), and
    big ones that are fine."""
    rng = ctx.rng
    bad = [b"1e999999", b"-1e999999", b"1.5e309", b"NaN", b"Infinity", b"-Infinity"]
    bad.append(b"1" + b"0" * rng.randint(MAX_INT_DIGITS, 10_000))
    good = [b"9" * rng.randint(1, MAX_INT_DIGITS), b"1e308", b"-0", b"5e-324", b"1E-999999"]
    path, headers, wrap = _json_target(ctx)
    if rng.random() < 0.6:
        number, expect = rng.choice(bad), REJECT
    else:
        number, expect = rng.choice(good), ACCEPT
    body = wrap(b'{"value": %s}' % number if rng.random() < 0.5 else number)
    events = 1 if expect == ACCEPT else 0
    return ctx.case("huge-number", _post(path, headers, body), expect=expect, events=events)


def _invalid_utf8(ctx: _Context) -> Case:
    """Bytes that are no UTF-8: refused in JSON bodies, stored as they are in binary mode."""
    rng = ctx.rng
    junk = rng.choice(_INVALID_UTF8)
    if rng.random() < 0.3:
        headers = _binary_headers(ctx)
        request = _post("/publish", headers, b'{"a": "' + junk + b'"}')
        return ctx.case("utf8-body", request, expect=ACCEPT, events=1)
    if rng.random() < 0.5:
        path, headers, wrap = _json_target(ctx)
        body = wrap(b'"' + junk + b'"')
        return ctx.case("utf8-body", _post(path, headers, body))
    header = rng.choice(["ce-source", "ce-type", "ce-fuzzext", "ce-id", "Content-Type"])
    if rng.random() < 0.5:
        # raw bytes in a header value (obs-text): granian passes such a value on as "", so
        # the proxy cannot read it and must refuse it (never store "")
        value: str | bytes = b"fuzz" + junk
        expect = REJECT
    else:
        # percent-encoded bytes must decode as UTF-8 (CloudEvents HTTP binding 3.1.3.2), and
        # a content type is never percent-encoded: "fuzz%FF" is no media type either
        value = "fuzz" + "".join(f"%{b:02X}" for b in junk)
        expect = REJECT
    if header == "ce-id":
        value = _bytes(ctx.id()) + _bytes(value)
    headers = _binary_headers(ctx, **{header: value})
    return ctx.case("utf8-header", _post("/publish", headers, b"{}"), expect=expect, events=1)


def _header_mix(ctx: _Context) -> Case:
    """Binary headers with a structured body, duplicated and missing attributes, bad versions,
    content types with odd parameters."""
    rng = ctx.rng
    structured = _dump(_event(ctx), rng)
    variant = rng.randrange(9)
    if variant == 0:  # binary headers, structured content type: structured mode wins
        headers = [*_binary_headers(ctx, **{"Content-Type": None}), *_structured_headers(rng)]
        return ctx.case(
            "header-mix", _post("/publish", headers, structured), expect=ACCEPT, events=1
        )
    if variant == 1:  # ... and a body that is binary data, not an event
        headers = [*_binary_headers(ctx, **{"Content-Type": None}), *_structured_headers(rng)]
        return ctx.case("header-mix", _post("/publish", headers, b'{"orderId": 42}'))
    if variant == 2:  # one attribute twice: granian joins the lines with ","
        headers = _binary_headers(ctx, **{"Content-Type": "application/json"})
        name, value = rng.choice(headers)
        headers.insert(rng.randint(0, len(headers)), (name, value))
        # an extension may hold a comma; no identity header, time or traceparent may. Granian
        # passes the first of two Content-Type lines and drops the other, unseen.
        expect = {"ce-fuzzext": ACCEPT, "Content-Type": ANY}.get(name, REJECT)
        events = 0 if expect == REJECT else 1
        request = _post("/publish", headers, b"{}")
        return ctx.case("header-mix", request, expect=expect, events=events)
    if variant == 3:  # a required attribute missing or empty
        name = rng.choice(["ce-specversion", "ce-id", "ce-source", "ce-type"])
        headers = _binary_headers(ctx, **{name: rng.choice([None, ""])})
        if name == "ce-specversion":
            headers.append(("ce-specversion", ""))  # else it is no binary-mode request at all
        return ctx.case("header-mix", _post("/publish", headers, b"{}"))
    if variant == 4:  # a required attribute missing from a structured event
        event = _event(ctx)
        del event[rng.choice(["specversion", "id", "source", "type"])]
        return ctx.case(
            "header-mix", _post("/publish", _structured_headers(rng), _dump(event, rng))
        )
    if variant == 5:  # specversion other than 1.0
        version = rng.choice(["0.3", "1.1", "2.0", "1", "1,0", "v1.0", "1.0.0"])
        if rng.random() < 0.5:
            headers = _binary_headers(ctx, **{"ce-specversion": version})
            return ctx.case("header-mix", _post("/publish", headers, b"{}"))
        event = _event(ctx, specversion=rng.choice([version, 1.0, None, ["1.0"]]))
        return ctx.case(
            "header-mix", _post("/publish", _structured_headers(rng), _dump(event, rng))
        )
    if variant == 6:  # charset=latin1, and a body really in Latin-1: not UTF-8
        event = _event(ctx, data="Grüße aus Köln, façade")
        body = json.dumps(event, ensure_ascii=False).encode("latin-1", errors="replace")
        latin1: list[Header] = [("Content-Type", "application/cloudevents+json; charset=latin1")]
        return ctx.case("header-mix", _post("/publish", latin1, body))
    if variant == 7:  # odd parameters on a structured content type
        media = rng.choice(
            [
                "application/cloudevents+json;;;",
                'application/cloudevents+json; charset="x;y"; boundary=--',
                "application/cloudevents+json ; q=0.1",
                "application/cloudevents+json;charset=latin1",
            ]
        )
        return ctx.case(
            "header-mix",
            _post("/publish", [("Content-Type", media)], structured),
            expect=ACCEPT,
            events=1,
        )
    # unsupported or wrong CloudEvents formats
    media = rng.choice(
        [
            "application/cloudevents+xml",
            "application/cloudevents",
            "application/cloudevents-batch+json",  # with a single event: no array
            "application/cloudevents+protobuf",
        ]
    )
    return ctx.case("header-mix", _post("/publish", [("Content-Type", media)], structured))


_TRACEPARENT: Final = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_TRACE_JUNK: Final = (
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"),
    ("traceparent", _TRACEPARENT.upper()),
    ("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01"),
    ("traceparent", "ff" + _TRACEPARENT[2:]),
    ("traceparent", _TRACEPARENT + "-extra"),
    ("traceparent", f"{_TRACEPARENT},{_TRACEPARENT}"),
    ("traceparent", "ünï"),
    ("traceparent", _TRACEPARENT + "\r\nx-evil: 1"),
    ("tracestate", "Upper=1"),
    ("tracestate", "a=1,a=2"),
    ("tracestate", ",".join(f"k{i}=v" for i in range(33))),
    ("tracestate", "novalue"),
    ("tracestate", "k=ünï"),
    ("tracestate", "k=a\r\nx-evil: 1"),
)


def _header_values(ctx: _Context) -> Case:
    """Header values the HTTP server cannot pass on faithfully, and what stands for them.

    Raw UTF-8 reaches the app as "" (refused), a raw CR or a control character is refused by
    the HTTP parser, a bare LF ends the header line (so the value ends there: either answer);
    percent-encoded, the same characters are a valid event.
    """
    rng = ctx.rng
    header = rng.choice(["ce-subject", "ce-fuzzext", "ce-source", "ce-type"])
    variant = rng.randrange(4)
    if variant == 0:
        headers = _binary_headers(ctx, **{header: rng.choice(["ünï", "fuzz €", "😀"]).encode()})
        return ctx.case("header-values", _post("/publish", headers, b"{}"))
    if variant == 1:
        value = rng.choice([b"a\rb", b"a\x00b", b"a\x01b", b"a\x7fb"])
        headers = _binary_headers(ctx, **{header: value})
        return ctx.case("header-values", _post("/publish", headers, b"{}"))
    if variant == 2:
        headers = _binary_headers(ctx, **{header: b"fuzz\nx-after-lf: 1"})
        request = _post("/publish", headers, b"{}")
        return ctx.case("header-values", request, expect=ANY, events=1)
    text = rng.choice(["a\r\nb", "ünï cöde", '"quoted" 100%', "tab\there"])
    header = rng.choice(["ce-subject", "ce-fuzzext"])  # free text; source and type are routed
    headers = _binary_headers(ctx, **{header: quote(text, safe="")})
    request = _post("/publish", headers, b"{}")
    return ctx.case("header-values", request, expect=ACCEPT, events=1)


def _trace_junk(ctx: _Context) -> Case:
    """Trace context that is no W3C Trace Context, in headers, ``ce-*`` headers and events:
    refused, since a worker delivers it as a header of its own. Valid context is accepted."""
    rng = ctx.rng
    valid = rng.random() < 0.2
    name, value = (
        rng.choice([("traceparent", _TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE,a@b=c d")])
        if valid
        else rng.choice(_TRACE_JUNK)
    )
    expect, events = (ACCEPT, 1) if valid else (REJECT, 0)
    where = rng.randrange(4)
    if where == 0:  # a request header (raw bytes: CR/LF there breaks the header block)
        raw = value.replace("\r\n", "\r")
        headers = _binary_headers(ctx, **{"traceparent": None, name: raw.encode()})
        request = _post("/publish", headers, b"{}")
    elif where == 1:  # a ce-* header, percent-encoded as the binding says
        headers = _binary_headers(ctx, **{f"ce-{name}": quote(value, safe="")})
        request = _post("/publish", headers, b"{}")
    elif where == 2:  # an extension of a structured event
        event = _event(ctx)
        event[name] = value
        request = _post("/publish", _structured_headers(rng), _dump(event, rng))
    else:  # an extension of one event of a batch: the whole batch is refused
        count = rng.randint(2, 5)
        events_list = [_event(ctx, item) for item in range(count)]
        events_list[rng.randrange(count)][name] = value
        headers = _structured_headers(rng, "application/cloudevents-batch+json")
        request = _post("/publish", headers, _dump(events_list, rng))
        events = count if valid else 0
    return ctx.case("trace-junk", request, expect=expect, events=events)


def _huge_header(ctx: _Context) -> Case:
    """Long types and sources (their subject must fit NATS's protocol line), big extension
    values, many headers, and headers bigger than the HTTP server buffers."""
    rng = ctx.rng
    variant = rng.randrange(5)
    if variant == 0:
        size = rng.choice([rng.randint(100, 400), rng.randint(5000, 60000)])
        attribute = rng.choice(["ce-type", "ce-source"])
        # a standard type: a prefixed one leaves the source out of the subject
        headers = _binary_headers(
            ctx, **{"ce-type": "order.created.v1", attribute: "t" * size + ".v1"}
        )
        expect = ACCEPT if size <= 400 else REJECT
        events = 1 if expect == ACCEPT else 0
        return ctx.case(
            "huge-header", _post("/publish", headers, b"{}"), expect=expect, events=events
        )
    if variant == 1:
        size = rng.choice([rng.randint(100, 400), rng.randint(5000, 50000)])
        event = _event(ctx, type="t" * size + ".v1", source="s", data="d")
        expect = ACCEPT if size <= 400 else REJECT
        request = _post("/publish", _structured_headers(rng), _dump(event, rng))
        return ctx.case("huge-header", request, expect=expect, events=1 if expect == ACCEPT else 0)
    if variant == 2:
        headers = _binary_headers(ctx, **{"ce-fuzzext": "v" * rng.randint(1000, 60000)})
        return ctx.case("huge-header", _post("/publish", headers, b"{}"), expect=ANY, events=1)
    if variant == 3:
        extra = [(f"ce-x{i}", "v") for i in range(rng.randint(100, 2000))]
        headers = [*_binary_headers(ctx), *extra]
        return ctx.case(
            "huge-header", _post("/publish", headers, b"{}"), expect=ANY, events=1, send=ALONE
        )
    # just over granian's buffer for a request head (408 KiB)
    headers = [*_binary_headers(ctx), ("X-Padding", "p" * rng.randint(420_000, 600_000))]
    return ctx.case(
        "huge-header", _post("/publish", headers, b"{}"), expect=ANY, events=1, send=ALONE
    )


def _oversized(ctx: _Context) -> Case:
    """Bodies over ``MAX_REQUEST_SIZE``: with a Content-Length, chunked, a Content-Length far
    larger than what follows, or a body without any framing."""
    rng = ctx.rng
    size = rng.randint(ctx.limit + 1, ctx.limit * 2)
    body = b'{"pad": "' + b"x" * size + b'"}'
    path, headers = rng.choice(
        [("/publish", _binary_headers(ctx)), (f"/{rng.choice(_APPS)}/v1/events", [])]
    )
    variant = rng.randrange(5)
    if variant == 0:
        request = _post(path, headers, body)
    elif variant == 1:
        headers = [*headers, ("Transfer-Encoding", "chunked")]
        request = http_request("POST", path, headers, chunked(body, rng), length=False)
    elif variant == 2:
        headers = [*headers, ("Content-Length", str(rng.choice([10**12, 2**63, ctx.limit + 1])))]
        request = http_request("POST", path, headers, body[:1000], length=False)
    elif variant == 3:  # no Content-Length: the body is no body, but the next "request"
        structured = _dump(_event(ctx), rng)
        request = http_request(
            "POST", "/publish", _structured_headers(rng), structured, length=False
        )
    else:  # Content-Length and chunked both: framing a server must not guess at
        headers = [
            *_structured_headers(rng),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
        ]
        request = http_request(
            "POST", "/publish", headers, chunked(_dump(_event(ctx), rng), rng), length=False
        )
        return ctx.case("oversized", request, expect=ANY, events=1, send=ALONE)
    return ctx.case("oversized", request, send=ALONE)


def _truncated(ctx: _Context) -> Case:
    """A body shorter than its Content-Length, then the client shuts its side: nothing of it
    may be stored."""
    rng = ctx.rng
    body = rng.choice(
        [_dump(_json_value(rng), rng), b'{"orderId": 42, "pad": "' + b"x" * 500 + b'"}']
    )
    headers = [*_binary_headers(ctx), ("Content-Length", str(len(body)))]
    sent = body[: rng.randint(0, len(body) - 1)]
    return ctx.case(
        "truncated", http_request("POST", "/publish", headers, sent, length=False), send=TRUNCATED
    )


def _truncated_chunked(ctx: _Context) -> Case:
    """A chunked binary-mode body cut inside a chunk, then the client shuts its side.

    Expected ANY: granian ends the body without an error when the connection ends, so the
    proxy cannot tell this from a complete body and stores what arrived (a known limit, in the
    README); the family's 2xx count in the report shows how often.
    """
    rng = ctx.rng
    coded = chunked(_dump(_json_value(rng), rng) + b"x" * rng.randint(1, 500), rng, finish=False)
    headers = [*_binary_headers(ctx), ("Transfer-Encoding", "chunked")]
    request = http_request(
        "POST", "/publish", headers, coded[: rng.randint(0, len(coded) - 3)], length=False
    )
    return ctx.case("truncated-chunked", request, expect=ANY, events=1, send=TRUNCATED)


def _slow(ctx: _Context) -> Case:
    """A valid event sent a few bytes at a time over half a second to a second and a half:
    slow, but within the proxy's body limits (2 s before PROXY_BODY_MIN_RATE counts)."""
    rng = ctx.rng
    request = _post("/publish", _binary_headers(ctx), _dump(_json_value(rng), rng))
    piece = rng.randint(1, 40)
    pause = rng.uniform(0.5, 1.5) / max(1, len(request) // piece)
    return ctx.case(
        "slow-client", request, expect=ACCEPT, events=1, send=TRICKLE, trickle=(piece, pause)
    )


def _slow_body(ctx: _Context) -> Case:
    """A valid event of any mode whose body trickles at 40 bytes/s at most, far below the
    proxy's minimum rate (PROXY_BODY_MIN_RATE): refused (408), and nothing of it stored."""
    rng = ctx.rng
    data = {"note": "x" * rng.randint(100, 400)}
    mode = rng.choice(["binary", "structured", "legacy"])
    if mode == "binary":
        request = _post("/publish", _binary_headers(ctx), _dump(data, rng))
    elif mode == "structured":
        request = _post("/publish", _structured_headers(rng), _dump(_event(ctx, data=data), rng))
    else:
        headers: list[Header] = [("Content-Type", "application/json")]
        body = _dump(_legacy_body(ctx, data=data), rng)
        request = _post(f"/{rng.choice(_APPS)}/v1/events", headers, body)
    trickle = (rng.randint(1, 8), rng.uniform(0.2, 0.5))
    return ctx.case("slow-body", request, expect=REJECT, send=SLOW_BODY, trickle=trickle)


def _legacy_wrong(ctx: _Context) -> Case:
    """Legacy bodies with fields of the wrong type or missing, and odd application names."""
    rng = ctx.rng
    if rng.random() < 0.3:  # a valid body, to an application name that may clean to nothing
        app = rng.choice(["%21%21", "%00", "%C3%A4pp", "a" * 3000, "..", "%2F"])
        request = _post(f"/{app}/v1/events", [], _dump(_legacy_body(ctx), rng))
        return ctx.case("legacy-wrong", request, expect=ANY, events=1, send=ALONE)
    wrong: dict[str, Any] = rng.choice(
        [
            {"event-type": rng.choice([1, [], {}, True])},
            {"event-type-version": rng.choice([1, [], "", "!!!"])},
            {"event-time": rng.choice([0, "yesterday", "2020-13-45T99:99:99Z", ""])},
            {"event-id": rng.choice(["not-a-uuid", 1, "00000000-0000-0000-0000-00000000000g"])},
            {"data": rng.choice([None, ""])},
            {"event-type": None},
        ]
    )
    body = _dump(_legacy_body(ctx, **wrong), rng)
    if rng.random() < 0.2:
        body = _dump([_legacy_body(ctx)], rng)  # an array, not an object
    request = _post(f"/{rng.choice(_APPS)}/v1/events", [("Content-Type", "application/json")], body)
    return ctx.case("legacy-wrong", request)


def _odd_request(ctx: _Context) -> Case:
    """Other methods, odd paths, HTTP versions and garbage request lines, all around a valid
    event body: only a POST to the publish path may store it."""
    rng = ctx.rng
    body = _dump(_event(ctx), rng)
    headers = _structured_headers(rng)
    variant = rng.randrange(4)
    if variant == 0:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "post"])
        request = http_request(method, "/publish", headers, body)
        if method == "post":  # Werkzeug reads methods case-insensitively: a publish
            return ctx.case("odd-request", request, expect=ANY, events=1, send=ALONE)
        if method == "OPTIONS":  # Flask answers 200 with the allowed methods
            return ctx.case("odd-request", request, expect=ANY, send=ALONE)
        return ctx.case("odd-request", request, send=ALONE)
    if variant == 1:
        return ctx.case(
            "odd-request", http_request("HEAD", "/publish", headers, body), send=ALONE, head=True
        )
    if variant == 2:
        targets: list[str | bytes] = [
            "/publish/",
            "//publish",
            "/publish?x=1&x=2",
            "/PUBLISH",
            "/publish%00",
            "/%ff%fe",
            "/" + "a" * 20000,
            "*",
            "http://evil.example/publish",
            "/../publish",
            "/publish#frag",
            b"/pub\xfflish",
            "/healthz",
        ]
        target = rng.choice(targets)
        expect = ANY if target != "/PUBLISH" else REJECT
        stores = 0 if target == "/healthz" else 1
        return ctx.case(
            "odd-request", _post(target, headers, body), expect=expect, events=stores, send=ALONE
        )
    raw = rng.choice(
        [
            b"\x00\x01\x02\x03\r\n\r\n",
            b"POST /publish HTTP/9.9\r\nContent-Length: 0\r\n\r\n",
            b"POST  /publish  HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /publish\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\r\n\r\n\r\n",
            b"POST /publish HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
            b"POST /publish HTTP/1.1\r\nHost: x\r\n Folded: header\r\nContent-Length: 2\r\n\r\n{}",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nBad Header: x\r\nContent-Length: 2\r\n\r\n{}",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3\r\n\r\n{}",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"0\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: \x01\r\n\r\n",
        ]
    )
    if rng.random() < 0.3:
        version = http_request("POST", "/publish", headers, body, version=b"HTTP/1.0")
        return ctx.case("odd-request", version, expect=ACCEPT, events=1, send=ALONE)
    # Empty lines before a request are allowed, and the HTTP/2 preface starts an HTTP/2
    # connection: either way the server rightly waits for more, so we shut our side.
    send = TRUNCATED if raw.startswith((b"\r\n", b"PRI ")) else ALONE
    return ctx.case("odd-request", raw, send=send)


_FAMILIES: Final = [
    ("valid-binary", 10),
    ("valid-structured", 8),
    ("valid-batch", 5),
    ("valid-legacy", 5),
    ("json-malformed", 10),
    ("json-deep", 6),
    ("huge-number", 6),
    ("invalid-utf8", 8),
    ("header-mix", 12),
    ("header-values", 6),
    ("trace-junk", 6),
    ("huge-header", 5),
    ("oversized", 3),
    ("truncated", 3),
    ("truncated-chunked", 1),
    ("slow-client", 0.1),
    ("slow-body", 0.2),
    ("legacy-wrong", 8),
    ("odd-request", 6),
]
_BUILDERS: Final[dict[str, Callable[[_Context], Case]]] = {
    "valid-binary": _valid_binary,
    "valid-structured": _valid_structured,
    "valid-batch": _valid_batch,
    "valid-legacy": _valid_legacy,
    "json-malformed": _malformed_json,
    "json-deep": _deep_json,
    "huge-number": _huge_number,
    "invalid-utf8": _invalid_utf8,
    "header-mix": _header_mix,
    "header-values": _header_values,
    "trace-junk": _trace_junk,
    "huge-header": _huge_header,
    "oversized": _oversized,
    "truncated": _truncated,
    "truncated-chunked": _truncated_chunked,
    "slow-client": _slow,
    "slow-body": _slow_body,
    "legacy-wrong": _legacy_wrong,
    "odd-request": _odd_request,
}
