"""``eventing``: the operator's command-line tool, a client of the manager's API and the proxy.

A program like the services, beside them: it reaches the system over HTTP only (no NATS, broker
or subscription source; ``setup.cfg``'s contracts say so), and of the kernel it imports the pure
parts alone (settings, units, events), so it runs on any laptop that reaches the two URLs.
"""
