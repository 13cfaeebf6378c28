"""Cloud side of edgeship: ``cloud.data`` (load, validate, synthesise), ``cloud.training`` (prepare, train,
baselines, export, gates, bundle) and ``cloud.fleet`` (publish, bundle server, rollout, fleet view, keys, provision).

Submodules are imported explicitly (``from cloud.data import loader``); this package file imports nothing,
so ``import cloud`` stays cheap and needs neither pandas nor TensorFlow.
"""
