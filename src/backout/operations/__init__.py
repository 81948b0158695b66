"""Plan, then execute: read-only plans of steps with reasons (``plan``), run by a
journaling executor (``executor``) so that ``backout resume`` can finish what a
crash interrupted; what SIGINT/SIGTERM do (``interrupt``) and what an operation
left behind (``summary``).

This package's ``__init__`` imports nothing: ``interrupt`` sits below the layers
that use it (the streaming pipeline), and importing it must not load the executor.
"""
