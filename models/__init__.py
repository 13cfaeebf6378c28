"""What the cloud and the edge must agree on.

The feature contract, the pure feature encoding (called by the trainer AND the agent), the bundle
manifest and its verification, the MQTT topic schema and the message payloads. Nothing here
imports from :mod:`edge` or :mod:`cloud`, and nothing here needs TensorFlow or pandas.
"""
