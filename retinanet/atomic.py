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


def write_json(path: str, value):
    write_text(path, json.dumps(value, indent=2))


def read_json(path: str):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError):
        return None
