"""The edgeship edge agent: runs on each in-store device.

It keeps verified model bundles in a versioned store, serves predictions over HTTP (and, later,
MQTT and serial), receives new bundles over MQTT and swaps them in atomically. The parts:

- :mod:`edge.predictor` — the embeddable "embedded model": bundle → validate → encode → infer.
- :mod:`edge.runtimes` — one plugin per inference runtime (LiteRT, ONNX Runtime, fake…).
- :mod:`edge.store` — versioned model folders, atomic activation pointer, rollback.
- :mod:`edge.transfer` — reassembly of a bundle from hashed chunks.
- :mod:`edge.http`, :mod:`edge.mqtt`, :mod:`edge.metrics` — the agent's surfaces.
- :mod:`edge.agent` — wires them together; ``python -m edge.agent --help``.

Importing :mod:`edge` imports nothing heavy; import the submodule you need.
"""
