"""Frozen dataclasses from user files: the shared reader of model cards and device profiles.

A mapping becomes a dataclass only with exactly its field names (an unknown key and a missing
required field are errors naming them and the file), a field declared ``bool`` takes only a
JSON/TOML boolean (``"no"`` is an error, not ``True``), every error the dataclass's own
validation raises is prefixed with the file, and a file is read as TOML when its suffix is
``.toml``, JSON otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path


def from_dict(cls, data: dict, origin: str, what: str, error: type[Exception]):
    """``cls(**data)`` after checking the keys against ``cls``'s fields (``what``: the name
    used in the error, e.g. "model card")."""
    if not isinstance(data, dict):
        raise error(f"{origin}: a {what} must be a mapping of field names to values")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = set(data) - names
    if unknown:
        raise error(f"{origin}: unknown {what} field(s) {sorted(unknown)}; "
                    f"valid fields: {sorted(names)}")
    missing = {f.name for f in fields if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING} - set(data)
    if missing:
        raise error(f"{origin}: missing {what} field(s) {sorted(missing)}")
    for f in fields:
        if f.type in (bool, "bool") and f.name in data and not isinstance(data[f.name], bool):
            raise error(f"{origin}: {what} field {f.name!r} must be true or false, "
                        f"got {data[f.name]!r}")
    try:
        return cls(**data)
    except error as err:
        if origin in str(err):
            raise
        raise error(f"{origin}: {err}") from None


def read_mapping(path: str | Path, error: type[Exception]) -> dict:
    """The mapping in a .json or .toml file; a parse error names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise error(f"{path}: cannot read: {reason}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise error(f"{path}: not valid {path.suffix[1:] or 'json'}: {err}") from None
