"""backout: reversible, data-safe deployments for Docker Compose applications.

The package is a library first; ``backout.cli`` is a thin layer on top of it and
nothing outside ``backout.cli`` may import click (a test enforces this).
"""

__version__ = "0.1.0"
