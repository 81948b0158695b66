"""``backout demo``: a narrated guarded deploy on a small stack (see run.py)."""

from backout.demo.run import run_demo

__all__ = ["run_demo"]
