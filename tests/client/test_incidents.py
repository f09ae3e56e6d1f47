"""Failures stay at the site: a failed reply carries a category and an incident id, the site's log the details."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedeye.client.app import app
from fedeye.client.audit import audit_path, payload_bytes, read_audit
from fedeye.client.incidents import (
    INCIDENT_FILE,
    SiteIdentity,
    _state_dir,
    contains_failures,
    failure_category,
    read_incidents,
)
from fedeye.client.state import fedeye_home
from fedeye.config import RunConfig
from fedeye.errors import ConfigError, ModelError, SiteDataError
from fedeye.models import build_model
from fedeye.protocol import FailureCategory

SECRET = "MRN-483920-Doe"  # a folder name that identifies a patient


@pytest.fixture
def leaky_site(tiny_sites: Path, tmp_path: Path) -> Path:
    """A copy of site-1 in a folder named after a patient, whose manifest names a missing image."""
    site = shutil.copytree(tiny_sites / "site-1", tmp_path / SECRET)
    manifest = site / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace(".png", "-gone.png", 1)
    manifest.write_text("\n".join(lines) + "\n")
    return site


def _request(cfg: RunConfig, message_type: str) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1})
    arrays = ArrayRecord(build_model(cfg.model).state_dict())
    return make_message(metadata, content=RecordDict({"arrays": arrays, "config": config}))


def _context(node_config: dict[str, str | int]) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("message_type", [MessageType.TRAIN, MessageType.EVALUATE])
def test_site_error_leaves_only_category_and_incident(leaky_site: Path, tmp_path: Path, message_type: str) -> None:
    cfg = RunConfig.model_validate({"model": {"img_size": 32}, "training": {"batch_size": 16}})
    state = tmp_path / "state"
    node = {"site-dir": str(leaky_site), "state-dir": str(state)}

    reply = app(_request(cfg, message_type), _context(node))

    assert not reply.has_error()
    assert SECRET.encode() not in payload_bytes(reply) and b"gone.png" not in payload_bytes(reply)
    assert set(reply.content.keys()) == {"metrics", "site"}
    assert dict(reply.content["metrics"]) == {"num-examples": 0}
    site = dict(reply.content["site"])
    assert site["status"] == "failed" and site["category"] == "data-error"
    assert len(str(site["incident"])) == 12 and str(site["incident"]) in str(site["reason"])
    (incident,) = read_incidents(state)
    assert incident["incident"] == site["incident"] and incident["category"] == "data-error"
    assert SECRET in incident["message"] and "SiteDataError" in incident["traceback"]
    logged = read_audit(audit_path(node, home=fedeye_home()))[-1]  # the audit log saw the failed reply
    assert logged["status"] == "ok" and logged["configs"]["site"]["status"] == "failed"


def test_failure_in_a_mod_is_contained_too(tiny_sites: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    node = {
        "site-dir": str(tiny_sites / "site-1"),
        "audit-log": str(blocker / SECRET / "audit.jsonl"),
        "state-dir": str(tmp_path / "state"),
    }
    cfg = RunConfig.model_validate({"model": {"img_size": 32}})

    reply = app(_request(cfg, MessageType.EVALUATE), _context(node))

    assert not reply.has_error() and SECRET.encode() not in payload_bytes(reply)
    assert reply.content["site"]["category"] == "internal"
    assert "AuditError" in read_incidents(tmp_path / "state")[0]["error_type"]


@pytest.mark.parametrize(
    ("err", "category"),
    [
        (SiteDataError("s", []), FailureCategory.DATA_ERROR),
        (ConfigError("c"), FailureCategory.CONFIG_ERROR),
        (ModelError("m"), FailureCategory.MODEL_ERROR),
        (MemoryError(), FailureCategory.OUT_OF_MEMORY),
        (KeyError("x"), FailureCategory.INTERNAL),
    ],
)
def test_error_classes_map_to_categories(err: Exception, category: FailureCategory) -> None:
    assert failure_category(err) is category


def test_torch_out_of_memory_is_its_own_category() -> None:
    torch = pytest.importorskip("torch")
    assert failure_category(torch.OutOfMemoryError("CUDA out of memory")) is FailureCategory.OUT_OF_MEMORY


def test_simulated_state_dir_is_keyed_by_the_resolved_site_folder(tmp_path: Path) -> None:
    one = _state_dir({"partition-id": 0}, tmp_path / "a" / "Eye Clinic", node_id=1)
    same = _state_dir({"partition-id": 3}, tmp_path / "a" / ".." / "a" / "Eye Clinic", node_id=2)
    other = _state_dir({"partition-id": 0}, tmp_path / "b" / "Eye Clinic", node_id=1)
    assert one == same != other and one.name.startswith("Eye-Clinic-") and one.parent == fedeye_home() / "sites"
    assert _state_dir({"state-dir": str(tmp_path / "s")}, None, node_id=1) == tmp_path / "s"


def test_state_folder_and_log_are_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"

    @contains_failures(lambda msg, ctx: SiteIdentity(name="Eye Clinic"))
    def handler(msg: Message, context: Context) -> Message:
        raise RuntimeError("boom")

    reply = handler(_request(RunConfig(), MessageType.TRAIN), _context({"state-dir": str(state)}))

    assert reply.content["site"]["name"] == "Eye Clinic"
    assert state.stat().st_mode & 0o777 == 0o700 and (state / INCIDENT_FILE).stat().st_mode & 0o777 == 0o600
