#!/usr/bin/env python3
"""Healthcheck for the nx-27017 stand-in: a pymongo ping on 127.0.0.1:27017."""
import os
import sys

import pymongo

client = pymongo.MongoClient(
    "127.0.0.1", int(os.environ.get("NX_PORT", "27017")), directConnection=True,
    serverSelectionTimeoutMS=8000, connectTimeoutMS=8000,
)
try:
    client.admin.command("ping")
except Exception as exc:
    print(f"mongodb stand-in not answering: {exc}", file=sys.stderr)
    sys.exit(1)
finally:
    client.close()  # without it, exiting waits ~1.5 s for pymongo's monitor thread
