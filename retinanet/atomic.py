"""Files written so that a kill at any moment leaves the old version or the new one.

Each writer fills a temporary file beside the target and renames it over the target;
`os.replace` is atomic on POSIX and on Windows. The temporary name is unique per call
(`tempfile.mkstemp`), so two processes or threads writing the same file never share one:
the last rename wins and the file always holds one complete text.
"""

from __future__ import annotations

import json
import os
import tempfile

# mkstemp creates files readable by their owner only; a fresh file gets the usual mode instead.
_NEW_FILE_MODE = 0o644


def write_text(path: str, text: str):
    """Writes `text` (UTF-8) to `path` atomically, keeping an existing file's mode.

    Raises:
        OSError: the folder is missing or not writable; the temporary file is removed and
            `path` is left as it was.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    descriptor, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = _NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def finite_json(value):
    """`value` with every NaN or infinite float (numpy scalars and arrays too) as None.

    JSON has no NaN or Infinity; Python's `json` writes them as bare words other parsers
    reject. Numpy integers and floats become Python ones, arrays lists, tuples lists.
    """
    import math

    if isinstance(value, dict):
        return {str(key): finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return finite_json(value.tolist())  # numpy arrays and scalars
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def write_json(path: str, value):
    """Writes `value` as JSON, non-finite floats as null (`finite_json`), atomically."""
    write_text(path, json.dumps(finite_json(value), indent=2, allow_nan=False))


def read_json(path: str):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError):
        return None
