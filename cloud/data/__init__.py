"""Data: the Favorita loader (streamed), validation of every file, and the synthetic generator.

May import models/ only."""
