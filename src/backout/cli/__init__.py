"""The command-line layer: parses arguments, calls the library, renders results.

Only this package (and ``backout.web``, if any) may import click.
"""
