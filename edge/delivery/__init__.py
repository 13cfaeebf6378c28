"""Delivery: the MQTT link, signed targets and trust, resumable chunked transfers of bundles.

May import models/, edge.monitoring and edge.store; never edge.serving, cloud or edgeship."""
