"""The edgeship edge agent: runs on each in-store device.

It keeps verified model bundles in a versioned store, serves predictions over HTTP (and, later,
MQTT and serial), receives new bundles over MQTT and swaps them in atomically. The parts:

- :mod:`edge.predictor` — the embeddable "embedded model": bundle → validate → encode → infer.
- :mod:`edge.runtimes` — one plugin per inference runtime (LiteRT, ONNX Runtime, fake…).
- :mod:`edge.store` — versioned model folders, atomic activation pointer, rollback.
- :mod:`edge.transfer` — reassembly of a bundle from hashed chunks.
- :mod:`edge.delivery` — signed targets, key lists, the resumable windowed pull of chunks;
  :mod:`edge.trust` — pinned and root-signed signing keys.
- :mod:`edge.http`, :mod:`edge.mqtt`, :mod:`edge.metrics` — the agent's surfaces.
- :mod:`edge.serving` — the prediction path all transports share: :mod:`edge.batching` (adaptive
  micro-batches), :mod:`edge.shadow` (shadow / A-B candidate), :mod:`edge.online_state` (lag windows
  from reported sales), :mod:`edge.drift` (PSI), :mod:`edge.predlog` (sampled prediction log);
  :mod:`edge.mqtt_serving` (request/response, commands); :mod:`edge.telemetry` (sequenced, spooled).
- :mod:`edge.agent` — wires them together; ``python -m edge.agent --help``.

Importing :mod:`edge` imports nothing heavy; import the submodule you need.
"""
