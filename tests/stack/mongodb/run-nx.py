#!/usr/bin/env python3
"""Run nx-27017 in the foreground, listening on 0.0.0.0:27017 with one SQLite file
per logical database in /data/db (the official mongo image's data path).

nx-27017 logs every command at INFO; NX_LOG_LEVEL (default WARNING) quiets that, and
NEOSQLITE_LOG_LEVEL (default ERROR) the storage layer's fallback warnings.
MONGO_INITDB_DATABASE is accepted for compatibility with the official image; the
stand-in creates databases on first use, so nothing has to be done with it.
MONGO_INITDB_ROOT_USERNAME/PASSWORD are NOT supported: nx-27017 has no authentication.
"""
import logging
import os
import sys

level = os.environ.get("NX_LOG_LEVEL", "WARNING").upper()
logging.basicConfig(
    level=getattr(logging, level, logging.WARNING),
    format="%(asctime)s %(levelname)s %(name)s %(message)s",
)
# neosqlite warns on every count_documents() it answers through a fallback path.
logging.getLogger("neosqlite").setLevel(
    getattr(logging, os.environ.get("NEOSQLITE_LOG_LEVEL", "ERROR").upper(), logging.ERROR))
if os.environ.get("MONGO_INITDB_ROOT_USERNAME"):
    print("WARNING mongodb stand-in: MONGO_INITDB_ROOT_USERNAME ignored, nx-27017 has no authentication",
          flush=True)
data_dir = os.environ.get("NX_DATA_DIR", "/data/db")
os.makedirs(data_dir, exist_ok=True)
port = os.environ.get("NX_PORT", "27017")
sys.argv = [
    "nx-27017",
    "--host", "0.0.0.0",
    "--port", port,
    "--data-dir", data_dir,
    "--log-file", "/dev/null",
    "--pid-file", "/tmp/nx_27017.pid",
]
print(f"INFO mongodb stand-in nx-27017 starting on 0.0.0.0:{port}, data dir {data_dir}, "
      f"database {os.environ.get('MONGO_INITDB_DATABASE', '(created on use)')}", flush=True)
from nx_27017.nx_27017 import main  # noqa: E402

sys.exit(main())
