"""One small module per external system (Compose/Engine, git, databases, HTTP).

Each exposes a typed interface over subprocesses (argv lists with timeouts) or
sockets; nothing here decides anything, it only asks and reports.
"""
