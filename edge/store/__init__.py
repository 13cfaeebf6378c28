"""The model store: versioned folders, atomic activation, history, crash recovery, rollback, on-device gate.

May import models/ only (and edge.runtimes through the predictor it is handed); never cloud or edgeship."""
