"""Field validation app (Gradio): forecasts, explanations and staff feedback on a live edge agent.

Needs the ``validate`` extra (gradio); the agent itself never imports it. See :mod:`edge.validate_app.app`."""
