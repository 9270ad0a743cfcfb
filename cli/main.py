"""The ``eventing`` console script: the command group, its settings, and the exit codes.

Exit codes: 0 done; 1 the manager or the proxy refused or failed (its problem's detail on
stderr), or could not be reached (the URL and the setting to change named); 2 a usage error or
a bad setting (click's own, and :class:`cli.api.BadCredential`); 130 Ctrl-C while waiting for
an operation (which goes on in the manager).
"""

from __future__ import annotations

from typing import Any

import click

from cli import api, deadletters, publishing, replays, status, tail
from eventing import settings

EPILOG = """\b
Settings (environment): EVENTING_MANAGER_URL (default http://127.0.0.1:8081),
EVENTING_PROXY_URL (default http://127.0.0.1:8080), EVENTING_MANAGER_TOKEN_FILE,
EVENTING_API_KEY_FILE.
\b
Exit codes: 0 ok; 1 the API refused or failed, or cannot be reached; 2 usage or settings;
130 interrupted while waiting for an operation (it goes on in the manager).
"""


class _Tool(click.Group):
    """The group, turning a :class:`cli.api.Failure` of any command into one line on stderr and
    its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except api.Failure as exc:
            click.echo(f"eventing: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Tool, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def eventing(ctx: click.Context) -> None:
    """Operate an eventing installation: publish, see deliveries, dead letters and replays."""
    ctx.obj = api.services(settings.group_or_exit(settings.CliSettings, "eventing"))


for _command in (
    publishing.publish,
    status.subscriptions,
    status.events,
    deadletters.dlq,
    replays.replay,
    tail.tail,
):
    eventing.add_command(_command)


def main() -> None:
    """The console script."""
    eventing(prog_name="eventing")
