"""Benchmarks of backout against the bare tools on the test stack (issue 7).

Run ``uv run python -m bench --help``; see the README's Performance section."""
