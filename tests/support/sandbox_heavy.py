"""Stands for the controller's heavy imports: records each process that imports it."""

import os
from pathlib import Path

with Path(os.environ["SANDBOX_IMPORT_LOG"]).open("a") as log:
    log.write(f"{os.getpid()}\n")
