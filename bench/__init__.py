"""audiogw's benchmarks (the ``bench`` extra): isolation and capacity, Asterisk, worker, supervisor, agent, live audio.

Not imported by the gateway itself; ``audiogw bench`` and ``audiogw bench-asterisk`` load it lazily.
"""
