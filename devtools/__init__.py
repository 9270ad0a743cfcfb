"""Programs the Procfile runs besides the services: ``eventing-display`` (a sink that prints
what it receives) and ``eventing-dependency`` (keeps a local nats-server or Redis up until its
clients have left).

A package of their own, not ``eventing/``: the kernel is imported by every service and does no
IO, while these are programs with a ``main``; not a service package either, since no deployment
runs them (Kubernetes brings its own NATS and Redis, and real sinks). They import nothing of
ours, and nothing of ours imports them (setup.cfg's import contracts).
"""
