"""Reading the text files of a dataset (split lists, class lists, JSON annotations, parallel text) with one error
that names the file, what was found and what was expected: a missing file, bytes that are not UTF-8 and
invalid JSON each become a `vitkit.errors` exception instead of a `UnicodeDecodeError` or `JSONDecodeError`
from deep inside a reader."""
from __future__ import annotations

import json
import os
from typing import Any

from ..errors import DataError, DatasetNotFoundError


def read_text(path: str | os.PathLike, expected: str) -> str:
    """The file's text (UTF-8; a byte-order mark is dropped). `expected` says what the file should be, e.g.
    "a class list with one name per line"; it ends every message."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path}: not found; expected {expected}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); expected {expected}") from err


def read_json(path: str | os.PathLike, expected: str) -> Any:
    """The parsed JSON of a UTF-8 file, or an error naming the file, line and column of the first problem."""
    text = read_text(path, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                        f"expected {expected}") from err
