"""The monitor's I/O half: the collector (scrapes, probes, container signals into a
snapshot) and the loop (evaluate, notify, roll back automatically). The pure
decision code it runs lives in ``backout.policy``."""
