"""What the bench scripts share: results written atomically, so an interrupted run keeps
the rows it finished and never leaves a half-written file, and budget fractions."""
from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so that an interrupted run never leaves half of it (nor the temporary file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_fraction(text: str) -> float:
    """``1/3`` or ``0.5`` as a number in (0, 1]."""
    num, _, den = text.partition("/")
    value = float(num) / float(den or 1)
    if not 0 < value <= 1:
        raise ValueError(f"budget fraction {text!r} is not in (0, 1]")
    return value
