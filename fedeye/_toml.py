"""Read a TOML file a person wrote: run files, ``site.toml``, a site's config.

:func:`read_toml` says in one sentence why a file cannot be used, whatever is
wrong with it: a folder, unreadable, not UTF-8, invalid TOML, or nested so
deeply that the parser runs out of stack. A UTF-8 byte order mark (Windows
Notepad writes one) is accepted.

>>> read_toml(Path("run.toml"))  # doctest: +SKIP
({'name': 'demo'}, None)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedeye.errors import ConfigError

_SAVE_AS_UTF8 = "save it as UTF-8 (in Notepad: Save as, Encoding: UTF-8)"


def read_toml(path: Path) -> tuple[dict[str, Any], str | None]:
    """Parse ``path``; return ``(table, None)``, or ``({}, reason)`` saying why it cannot be used."""
    if path.is_dir():
        return {}, "is a folder, not a TOML file; pass the file itself"
    try:
        raw = path.read_bytes()
    except OSError as err:
        return {}, f"cannot be read ({err.strerror or err}); check the path and its permissions"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return {}, f"is UTF-16 text, not UTF-8; {_SAVE_AS_UTF8}"
        line = raw.count(b"\n", 0, err.start) + 1
        return {}, f"byte 0x{raw[err.start : err.start + 1].hex()} on line {line} is not UTF-8; {_SAVE_AS_UTF8}"
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as err:
        return {}, f"not valid TOML ({err}); check the syntax near that line"
    except RecursionError:
        return {}, "not valid TOML: arrays or tables are nested too deeply; flatten them"


def load_toml(path: Path) -> dict[str, Any]:
    """Parse ``path`` or raise :class:`ConfigError` naming it and saying why it cannot be used."""
    table, reason = read_toml(path)
    if reason is not None:
        raise ConfigError(f"{path}: {reason}")
    return table
