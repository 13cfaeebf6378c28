"""Serial bridge between microcontrollers and the edge agent (pyserial).

Planned layout: ``protocol.py`` (pure framing and CRC), ``link.py`` (serial I/O), ``bridge.py``
(to the agent's predictor), ``sim.py`` (a host simulator of the device) and ``firmware/`` (the
reference firmware source). Not built yet: the spine serves HTTP; a later issue adds the bridge.
"""
