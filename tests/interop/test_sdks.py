"""Real CloudEvents SDKs publish through the proxy and receive from the workers (issue 12).

One test per publisher x mode x case: every receiver (the Go, Node and Python SDKs, and the
request itself read with the HTTP binding) must hold exactly what the publishing SDK put on the
wire, attribute by attribute, extension by extension, byte by byte. The only additions allowed
are ``originaltype`` (the type as published) and trace extensions. Where an SDK keeps binary-mode
values percent-encoded the test decodes them, as the binding says a receiver should; where an
SDK's time type is coarser than the wire's, times compare at that SDK's precision (``wire``
compares the text). A binary-mode request with unencoded non-ASCII bytes in a ``ce-*`` header
breaks the binding: a clear 4xx for it passes, a changed value does not.
"""

from __future__ import annotations

import json

import pytest

from tests.interop.events import CASES, Receiver, differences
from tests.interop.matrix import MATRIX, NOTES, RECEIVERS, InteropRun, cell_id
from tests.interop.programs import MODES

pytestmark = [pytest.mark.integration, pytest.mark.interop]

CELLS = [
    pytest.param(sdk, mode, case, id=cell_id(sdk, mode, case))
    for sdk, modes in MODES.items()
    for mode in modes
    for case in CASES
]


@pytest.mark.parametrize(("sdk", "mode", "case"), CELLS)
def test_every_receiver_holds_what_the_sdk_published(
    interop_run: InteropRun, sdk: str, mode: str, case: str
) -> None:
    cell = interop_run.cells[cell_id(sdk, mode, case)]
    row = MATRIX.setdefault((sdk, mode, case), {})
    if cell.refused:
        # The SDK itself cannot put this event on the wire (Node's http module refuses header
        # characters above U+00FF): nothing may then reach the proxy or any receiver.
        row.update(dict.fromkeys(RECEIVERS, "n/a"))
        NOTES.append(f"{cell.event_id}: the {sdk} SDK sends nothing: {cell.refused}")
        assert cell.published is None, f"{cell.event_id} was refused by the SDK, yet sent"
        assert not cell.received, f"{cell.event_id} was refused by the SDK, yet delivered"
        return
    assert cell.published is not None, (
        f"{cell.event_id} never reached the proxy: {cell.proxy_error}"
    )
    sent_as = [
        *differences(cell.intended, cell.published, Receiver("intent", True, time_digits=9)),
        *cell.published.notes,
    ]
    if sent_as:
        NOTES.append(f"{cell.event_id}: the {sdk} SDK sent " + "; ".join(sent_as))
    if cell.published.raw_non_ascii and _clear_refusal(cell.proxy_status, cell.proxy_error):
        # Unencoded non-ASCII breaks the binding, and the proxy's HTTP server cannot read it:
        # a 4xx saying so is the right answer, as long as no receiver gets the event.
        delivered = sorted(cell.received)
        row.update(dict.fromkeys(RECEIVERS, "4xx"))
        assert not delivered, f"{cell.event_id} was refused, yet delivered to {delivered}"
        return
    if not 200 <= cell.proxy_status < 300:
        row.update(dict.fromkeys(RECEIVERS, "FAIL"))
        pytest.fail(
            f"the proxy answered {cell.proxy_status} to {cell.event_id}: {cell.proxy_error}\n"
            f"published: {cell.published}"
        )
    failures: dict[str, list[str]] = {}
    for name, receiver in RECEIVERS.items():
        held = cell.received.get(name, [])
        found = (
            [f"not delivered{_parse_errors(interop_run, name)}"]
            if not held
            else [diff for event in held for diff in differences(cell.published, event, receiver)]
        )
        row[name] = "FAIL" if found else "ok"
        if found:
            failures[name] = found
    assert not failures, (
        f"{cell.event_id}: receivers differ from what was published\n"
        + "\n".join(f"  {name}: " + "\n    ".join(found) for name, found in failures.items())
        + f"\npublished: {cell.published}"
    )


def _parse_errors(run: InteropRun, receiver: str) -> str:
    errors = run.receiver_errors.get(receiver, [])
    return f" (the SDK refused {len(errors)} requests, e.g. {errors[0]})" if errors else ""


def _clear_refusal(status: int, body: str) -> bool:
    """A 4xx with a problem+json body that says what was wrong."""
    try:
        problem = json.loads(body)
    except ValueError:
        return False
    return 400 <= status < 500 and isinstance(problem, dict) and bool(problem.get("detail"))
