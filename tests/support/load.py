"""Steady HTTP traffic for tests: the same load generator the demo uses."""

from backout.demo.traffic import Traffic as Load

__all__ = ["Load"]
