"""``eventing-display``: a sink for the quickstart that prints every CloudEvent it receives.

Answers 204 to every POST and prints the ``ce-*`` attributes, the content type and the body, so
``honcho start`` shows events arriving next to the processes that carried them. Not for
production: it keeps nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20))
        attributes = {k[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        lines = [f"event {attributes.get('id', '?')} on {self.path}"]
        lines += [f"  {name}: {value}" for name, value in sorted(attributes.items())]
        lines.append(f"  content-type: {self.headers.get('Content-Type', '-')}")
        lines.append(f"  data: {body.decode('utf-8', errors='replace')}")
        print("\n".join(lines), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    port = int(os.environ.get("EVENT_DISPLAY_PORT", "8090"))
    with ThreadingHTTPServer(("127.0.0.1", port), _Handler) as server:
        print(f"event display listening on http://127.0.0.1:{port}/", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
