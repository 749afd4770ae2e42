"""PostgreSQL COPY text rows for a model's table, with the model's own defaults filled in."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Table

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def text(value: Any, is_json: bool = False) -> str:
    """Return one value in COPY's text format."""
    if value is None:
        return "\\N"
    if is_json:
        value = json.dumps(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value).translate(_ESCAPES)


def _default(table: Table, name: str) -> Any:
    column = table.c[name]
    default = column.default
    if default is None:
        if not column.nullable:
            raise ValueError(f"{table.name}.{name} needs a value: no default, not nullable")
        return None
    if column.primary_key or column.unique:
        raise ValueError(f"{table.name}.{name} is unique: give it a value per row")
    arg = getattr(default, "arg", None)
    return arg(None) if callable(arg) else arg


class CopyRows:
    """Format rows of one table: given columns per row, every other column from its default."""

    def __init__(self, table: Table, given: Sequence[str], fixed: Mapping[str, Any]) -> None:
        self.table = table
        self.given = list(given)
        self.json = [isinstance(table.c[name].type, JSON) for name in self.given]
        rest = [c.name for c in table.columns if c.name not in given]
        values = {name: fixed[name] if name in fixed else _default(table, name) for name in rest}
        self.columns = self.given + rest
        tail = "\t".join(text(values[n], isinstance(table.c[n].type, JSON)) for n in rest)
        self._tail = "\t" + tail + "\n" if rest else "\n"

    @property
    def statement(self) -> str:
        """Return the COPY statement for these columns."""
        return f"COPY {self.table.name} ({', '.join(self.columns)}) FROM STDIN"

    def line(self, values: Iterable[Any]) -> str:
        """Return one row: the given values in order, then the fixed tail."""
        return "\t".join(text(v, j) for v, j in zip(values, self.json, strict=True)) + self._tail
