"""The partition engine: where a record of ``runs.events`` is decoded, judged, folded into run
state, checkpointed to object storage and acknowledged, for one partition at a time.

It knows nothing of Faust, aiokafka or HTTP (an import-linter contract holds it to that): the
worker's wiring in ``agents/`` adapts Kafka and the datamanager to its ports
(``partition.ports``), and the unit tests drive it with in-memory fakes.

- ``owner``: one partition's owner — serving, catching up, checkpoints, time decisions.
- ``materializer``: decode, route check, apply, emit; the runs a checkpoint must write.
- ``admission``: which events are let in, and the refusal codes.
- ``outbox``: what the owner sends (phase changes, ready tasks, refusals, dead letters).
- ``waiters``: HTTP writes waiting for their events to be applied.
- ``decisions``: the decisions taken from time (lapsed leases, timeouts).
- ``finals``, ``history``: stored formats the engine writes besides run states.
- ``placement``: which partition a run id (or any key) lives in.
- ``metrics``: the engine's Prometheus metrics.
"""
