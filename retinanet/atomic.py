"""Files written so that a kill at any moment leaves the old version or the new one.

Each writer fills a temporary file beside the target and renames it over the target;
`os.replace` is atomic on POSIX and on Windows.
"""

from __future__ import annotations

import json
import os


def write_text(path: str, text: str):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, path)


def write_json(path: str, value):
    write_text(path, json.dumps(value, indent=2))


def read_json(path: str):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError):
        return None
