"""The egress policy: which addresses a sink may resolve to (pure).

A subscription names its sink, so whoever may write a subscription could otherwise make the
workers POST to any address they reach: the cloud's metadata service (credentials of the node),
the pod's own loopback, and, through dead letters that tell a refused connection from an
answer, a map of which ports are open. The policy refuses by default:

* link-local addresses (``169.254.0.0/16``, ``fe80::/10``), where cloud metadata services live;
* the cloud metadata services by address (``fd00:ec2::254``, ``100.100.100.200``) and by name
  (:data:`METADATA_NAMES`);
* loopback (``127.0.0.0/8``, ``::1``, and ``0.0.0.0/8``, ``::``, which reach it too) when the
  subscriptions come from Kubernetes: there the sink is another pod's Service, never the worker
  itself. In the folder mode the quickstart's sink is on loopback, so loopback stays allowed.

``SINK_ALLOW`` lets an address or name through that a default refuses; ``SINK_DENY`` refuses
more, and wins over everything. Both hold CIDRs (an address alone is one host) and host names
(``*.example.com`` also covers every name below ``example.com``). A name is refused if its
name or any address it resolves to is: the worker checks the addresses it actually connects
to (:mod:`workers.egress`), the manager those it resolves at reconcile, to show why a
subscription is not ready.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from eventing.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Names of cloud metadata services (Google, AWS, and the bare names their resolvers answer).
METADATA_NAMES = (
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
)
_LINK_LOCAL = ("169.254.0.0/16", "fe80::/10")
_METADATA_ADDRESSES = ("fd00:ec2::254/128", "100.100.100.200/32")
_LOOPBACK = ("127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128")


def network_of(entry: str) -> Network | None:
    """The network an entry of ``SINK_ALLOW`` / ``SINK_DENY`` names, or None for a host name."""
    try:
        return ipaddress.ip_network(entry.strip().strip("[]"), strict=False)
    except ValueError:
        return None


def host_name(host: str) -> str:
    """A host as rules compare it: lower case, no trailing dot, no IPv6 brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Rules:
    """A list of networks and host names, as ``SINK_ALLOW`` or ``SINK_DENY`` writes it."""

    networks: tuple[Network, ...] = ()
    names: tuple[str, ...] = ()  #: lower case; ``*.example.com`` covers the names below

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> Rules:
        """Rules from entries that ``eventing.settings`` validated: CIDRs, addresses, names."""
        networks: list[Network] = []
        names: list[str] = []
        for entry in entries:
            network = network_of(entry)
            if network is None:
                names.append(host_name(entry))
            else:
                networks.append(network)
        return cls(tuple(networks), tuple(names))

    def covers(self, name: str | None, address: Address | None) -> bool:
        """Whether the rules name ``name`` or hold ``address``."""
        if address is not None and any(address in network for network in self.networks):
            return True
        return name is not None and any(_name_matches(name, pattern) for pattern in self.names)


_DEFAULTS = (
    ("link-local", Rules.parse(_LINK_LOCAL)),
    ("a cloud metadata service", Rules.parse(_METADATA_ADDRESSES + METADATA_NAMES)),
)
_LOOPBACK_RULES = ("loopback, refused when SUBSCRIPTIONS_SOURCE=kubernetes", Rules.parse(_LOOPBACK))


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which sink addresses deliveries may connect to."""

    allow: Rules = Rules()
    deny: Rules = Rules()
    loopback: bool = True  #: whether loopback sinks are allowed (the folder mode)

    def refusal(self, host: str, address: str | None = None) -> str | None:
        """Why the policy refuses to connect to ``address`` for the sink host ``host`` (the
        name alone when ``address`` is None), or None when it allows it. The reason names the
        policy and the setting to change, never anything learnt from the address itself."""
        name = host_name(host)
        ip = _address(address if address is not None else name)
        shown = name if ip is None or str(ip) == name else f"{name} ({ip})"
        if self.deny.covers(name, ip):
            return f"the egress policy refuses sink {shown}: it is in SINK_DENY"
        if self.allow.covers(name, ip):
            return None
        defaults = _DEFAULTS if self.loopback else (*_DEFAULTS, _LOOPBACK_RULES)
        for what, rules in defaults:
            if rules.covers(name, ip):
                return (
                    f"the egress policy refuses sink {shown}: it is {what} (SINK_ALLOW lets it"
                    " through)"
                )
        return None


def policy_for(settings: Settings) -> EgressPolicy:
    """The policy ``SINK_ALLOW``, ``SINK_DENY`` and ``SUBSCRIPTIONS_SOURCE`` configure."""
    return EgressPolicy(
        allow=Rules.parse(settings.delivery.sink_allow),
        deny=Rules.parse(settings.delivery.sink_deny),
        loopback=settings.source.kind != "kubernetes",
    )


def loopback_warning(policy: EgressPolicy) -> str | None:
    """The start-up warning of a policy that lets sinks reach the worker's own loopback (the
    folder mode's default, for the quickstart's sink), or None."""
    if policy.refusal("localhost", "127.0.0.1") is not None:
        return None
    why = "SUBSCRIPTIONS_SOURCE=directory" if policy.loopback else "SINK_ALLOW"
    return (
        f"sinks on loopback are allowed ({why}); where others write subscriptions, refuse them"
        " with SINK_DENY=127.0.0.0/8,::1"
    )


def _address(text: str) -> Address | None:
    """The address ``text`` is (an IPv4-mapped IPv6 address as its IPv4 one), else None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: scope dropped
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern
