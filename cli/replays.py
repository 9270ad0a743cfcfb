"""``eventing replay``: a subscription's archived events since a time, delivered again to its
current sink through its policy (POST /subscriptions/{ns}/{name}/replay), followed to the end."""

from __future__ import annotations

import click

from cli import api, progress
from cli.options import MOMENT, SUBSCRIPTION, json_option, subscription_path


@click.command()
@click.argument("subscription", type=SUBSCRIPTION)
@click.option(
    "--since", type=MOMENT, required=True, help="From this time: RFC 3339, or 15m, 2h ago."
)
@json_option
@click.pass_obj
def replay(services: api.Services, subscription: str, since: str, as_json: bool) -> None:
    """Deliver SUBSCRIPTION's events since a time again; says how many had expired."""
    path = f"{subscription_path(subscription)}/replay"
    document = services.manager.document("POST", path, body={"since": since})
    progress.follow(services, progress.started(document), as_json=as_json)
