"""Training: prepare, baselines, the Keras model, export and quantisation, gates, the pipeline, bundling.

May import models/, cloud.data and edge.runtimes (the parity gate runs the device runtimes)."""
