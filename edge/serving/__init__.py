"""Serving: the predictor, the shared pipeline (validate → A/B → batch → record), HTTP and MQTT transports.

May import models/, edge.runtimes, edge.monitoring and edge.store; never edge.delivery, cloud or edgeship."""
