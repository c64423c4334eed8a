"""What the bench scripts share: results written atomically, so an interrupted run keeps
the rows it finished and never leaves a half-written file."""
from __future__ import annotations

import os


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
