"""The edgeship edge agent: runs on each in-store device.

It keeps verified model bundles in a versioned store, serves predictions over HTTP (and, later,
MQTT and serial), receives new bundles over MQTT and swaps them in atomically. The parts:

- :mod:`edge.serving.predictor` — the embeddable "embedded model": bundle → validate → encode → infer.
- :mod:`edge.runtimes` — one plugin per inference runtime (LiteRT, ONNX Runtime, fake…).
- :mod:`edge.store.model_store` — versioned model folders, atomic activation pointer, rollback.
- :mod:`edge.delivery.transfer` — reassembly of a bundle from hashed chunks.
- :mod:`edge.delivery.updater` — signed targets, key lists, the resumable windowed pull of chunks;
  :mod:`edge.delivery.trust` — pinned and root-signed signing keys.
- :mod:`edge.serving.http`, :mod:`edge.delivery.link`, :mod:`edge.monitoring.metrics` — the agent's surfaces.
- :mod:`edge.serving.pipeline` — the prediction path all transports share: :mod:`edge.serving.batching` (adaptive
  micro-batches), :mod:`edge.serving.shadow` (shadow / A-B candidate), :mod:`edge.serving.online_state` (lag windows
  from reported sales), :mod:`edge.monitoring.drift` (PSI), :mod:`edge.monitoring.predlog` (sampled prediction log);
  :mod:`edge.serving.mqtt` (request/response, commands); :mod:`edge.monitoring.telemetry` (sequenced, spooled).
- :mod:`edge.agent` — wires them together (it is the delivery link's host: :class:`edge.delivery.link.LinkHost`); ``edgeship agent --help``.

Importing :mod:`edge` imports nothing heavy; import the submodule you need.
"""
