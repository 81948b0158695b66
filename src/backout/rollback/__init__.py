"""Rollbacks: one service, the whole stack, one database. Each is a plan of
journaled steps (see backout.operations) and ends with a verification."""
