"""Monitoring: Prometheus metrics, telemetry and events (store-and-forward), drift, the prediction log.

May import models/ only; never cloud or edgeship."""
