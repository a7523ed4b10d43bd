"""Reading TOML config files and turning pydantic's complaints into ConfigError text."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamrec.errors import ConfigError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file; ConfigError saying which `what` file could not be read or parsed."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"Unable to read {what} at '{path}' ({exc}).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what.capitalize()} '{path}' is not valid TOML: {exc}.") from exc


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of the first problem pydantic found."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]
