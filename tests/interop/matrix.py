"""The interop matrix: its cells, how they are published and collected, and the results table.

Every SDK publishes every case in every mode it has to the proxy through a recording relay, so
the test reads the exact request it made (what the spec says it published). Each SDK's receiver,
and a raw recording sink read with the HTTP binding ("wire"), is subscribed to the same type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from testing.sink import SinkServer
from testing.system import System
from tests.interop.events import (
    CASES,
    Receiver,
    SpecEvent,
    intended,
    neutral_event,
    read_request,
    read_sdk_output,
)
from tests.interop.programs import MODES, ReceiverProcess, Sdk, publish
from tests.interop.relay import RecordingRelay

#: Receivers in matrix order, with what their SDKs do to values (README "Interoperability").
RECEIVERS = {
    "go": Receiver("go", decodes_percent=False, time_digits=9),
    "node": Receiver("node", decodes_percent=False, time_digits=3, stamps_time=True),
    "python": Receiver("python", decodes_percent=True, time_digits=6, stamps_time=True),
    "wire": Receiver("wire", decodes_percent=True, time_digits=None),
}
DELIVERY_TIMEOUT = 30.0


@dataclass
class Cell:
    """One publisher x mode x case: what was meant, sent, answered and received."""

    sdk: str
    mode: str
    case: str
    event_id: str
    intended: SpecEvent
    published: SpecEvent | None = None  #: the request read with the binding; None: not sent
    refused: str = ""  #: why the SDK (or its HTTP client) sent nothing
    proxy_status: int = 0
    proxy_error: str = ""
    received: dict[str, list[SpecEvent]] = field(default_factory=dict)


@dataclass(repr=False)  # the default repr would fill every traceback with all cells
class InteropRun:
    cells: dict[str, Cell]
    receiver_errors: dict[str, list[str]]  #: receiver -> requests its SDK could not parse


#: (sdk, mode, case) -> receiver -> "ok" | "FAIL" | "n/a"; filled by the tests, printed at the end.
MATRIX: dict[tuple[str, str, str], dict[str, str]] = {}
NOTES: list[str] = []


def cell_id(sdk: str, mode: str, case: str) -> str:
    return f"{sdk}-{mode}-{case}"


def publish_everything(sdks: list[Sdk], system: System) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    relay = RecordingRelay(system.proxy_port)
    try:
        for sdk in sdks:
            for mode in MODES[sdk.name]:
                events = []
                for case in CASES:
                    event_id = cell_id(sdk.name, mode, case)
                    cells[event_id] = Cell(sdk.name, mode, case, event_id, intended(event_id, case))
                    events.append(neutral_event(event_id, case))
                for event_id, result in publish(sdk, f"{relay.url}/publish", mode, events).items():
                    cells[event_id].proxy_status = result["status"]
                    cells[event_id].proxy_error = result.get("error", "")
        requests = relay.requests()
    finally:
        relay.stop()
    for headers, body in requests:
        for event in read_request(headers, body):
            cell = cells.get(event.attributes.get("id", ""))
            if cell is not None:
                cell.published = event
    for cell in cells.values():
        if cell.published is None and cell.proxy_status == 0:
            cell.refused = cell.proxy_error
    return cells


def collect(cells: dict[str, Cell], receivers: list[ReceiverProcess], wire: SinkServer) -> None:
    """Wait until every event the proxy accepted reached every receiver (or the time is up)."""
    accepted = {event_id for event_id, cell in cells.items() if 200 <= cell.proxy_status < 300}

    def arrivals() -> dict[str, list[SpecEvent]]:
        found = {
            receiver.sdk.name: [
                read_sdk_output(line) for line in receiver.lines() if "error" not in line
            ]
            for receiver in receivers
        }
        found["wire"] = [
            event for d in wire.sink.received() for event in read_request(d.headers, d.body)
        ]
        return found

    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        found = arrivals()
        complete = all(
            accepted <= {e.attributes.get("id") for e in events} for events in found.values()
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for receiver, events in found.items():
        for event in events:
            cell = cells.get(event.attributes.get("id", ""))
            if cell is not None:
                cell.received.setdefault(receiver, []).append(event)
