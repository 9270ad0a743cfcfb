"""The one harness tests and benchmarks share: real servers (nats-server, cluster, Redis,
RabbitMQ), the services as subprocesses, sinks, process statistics, honcho runs, hostile input.

It runs from the repository checkout (``tests/`` and ``bench/`` import it); it is not installed
with the product (setup.cfg lists only eventing, proxy, manager, workers and devtools).
"""
