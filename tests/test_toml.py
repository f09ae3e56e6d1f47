"""read_toml: every way a hand-written TOML file can be unusable is one sentence, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye._toml import load_toml, read_toml
from fedeye.errors import ConfigError


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(b'\xef\xbb\xbfname = "x"\n')

    assert read_toml(path) == ({"name": "x"}, None)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        ('name = "Caf\xe9"\n'.encode("latin-1"), "byte 0xe9 on line 1 is not UTF-8"),
        ('name = "x"\n'.encode("utf-16"), "UTF-16"),
        (b"name = \n", "not valid TOML"),
        (b'name = "x\x00"\n', "not valid TOML"),
    ],
)
def test_unusable_content_gives_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(content)

    table, found = read_toml(path)

    assert table == {} and found is not None and reason in found


def test_a_folder_gives_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_toml(tmp_path)
