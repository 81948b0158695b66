"""Backups that can be trusted: streamed, compressed, verified, published atomically.

A backup set is a directory of artifacts plus ``manifest.json``, written last.
Only a directory with a valid manifest is a backup; anything else under the
backup directory is the leftover of an interrupted run and is cleaned up.
"""
