"""site.toml and dashboard requests under generated input: a clear answer, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from fedeye.errors import ConfigError
from fedeye.server.dashboard import create_app
from fedeye.server.store import mask_url
from fedeye.sites.base import SiteInfo, load_site_info

TOKEN = "fuzz-token-0123456789"
VALUES: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=10), st.integers(), st.floats(), st.booleans(), st.lists(st.text(max_size=4), max_size=3)
)


@given(
    st.dictionaries(
        st.sampled_from(["name", "modality", "task", "label_names", "oct_frames", "preprocess", "x"]), VALUES
    )
)
def test_site_toml_is_valid_or_a_config_error(table: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "site.toml").write_text(tomli_w.dumps(table))
        try:
            info = load_site_info(Path(tmp))
        except ConfigError as err:
            assert "site.toml" in str(err)
            return
    assert isinstance(info, SiteInfo) and "\n" not in info.name


CLIENT = TestClient(create_app("sqlite://", token=TOKEN), base_url="http://127.0.0.1")


@given(st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=30), st.text(max_size=20))
def test_dashboard_requests_never_fail_or_leave_the_server(path: str, host: str) -> None:
    headers = {"Host": host.encode("ascii", "ignore").decode() or "127.0.0.1"}
    response = CLIENT.get(f"/{path}?token={TOKEN}", headers=headers, follow_redirects=False)

    assert response.status_code < 500
    location = response.headers.get("location", "/")
    assert location.startswith("/") and not location.startswith(("//", "/\\"))


@given(st.text(min_size=1, max_size=12).filter(lambda p: p.isalnum()), st.text(max_size=30))
def test_mask_url_never_shows_the_password(password: str, rest: str) -> None:
    masked = mask_url(f"postgresql://user:{password}@host:5432/{rest}")
    assert f":{password}@" not in masked
