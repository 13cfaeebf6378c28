"""Feedback from the shop floor, cloud side: ``collect`` (MQTT → append-only, deduplicated store),
``report`` (per site and model version), ``training`` (actuals as labelled rows for the next model).

Submodules are imported explicitly; this file imports nothing."""
