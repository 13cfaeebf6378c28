"""Cloud side of edgeship: data, training, gates, export, signing, publishing and the fleet view.

Submodules are imported explicitly (``from cloud import data``); this package file imports nothing,
so ``import cloud`` stays cheap and needs neither pandas nor TensorFlow.
"""
