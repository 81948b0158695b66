"""Where backup sets live and how bytes get there: the streaming pipeline (zstd,
sha256, a format checker, all in one pass), the set directory (partial, then
published with its manifest last), CRC-64 for Redis, and the pure retention rule.

A backup set is a directory of artifacts plus ``manifest.json``, written last.
Only a directory with a valid manifest is a backup; anything else under the
backup directory is the leftover of an interrupted run and is cleaned up.
"""
