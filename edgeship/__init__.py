"""edgeship: continuous delivery of ML models to in-store edge devices.

The command line lives in :mod:`edgeship.cli`; the code in the user's top-level packages
:mod:`models` (the shared contract), :mod:`cloud`, :mod:`edge` and :mod:`firmware_bridge`.
"""

__version__ = "0.1.0"
