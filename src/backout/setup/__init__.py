"""Setting a project up and checking it: the ``backout init`` generator (derive a
commented backout.toml from a Compose project), ``init --scripts``, and ``backout
doctor`` (what the next rollback will need, checked before it is needed)."""
