"""Site audit log: one line per outgoing reply, and proof that no patient data leaves."""

from __future__ import annotations

import csv
import json
import multiprocessing
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.clientapp import ClientApp

from fedeye.client.app import evaluate, train
from fedeye.client.audit import (
    AuditEntry,
    audit_mod,
    audit_path,
    describe_reply,
    ensure_audit_file,
    payload_bytes,
    read_audit,
    simulated_site_of,
)
from fedeye.client.state import simulated_state
from fedeye.config import RunConfig
from fedeye.errors import AuditError
from fedeye.models import build_model
from fedeye.sites.synth import synthesize_sites

BLOB = bytes([0, 1])

# ------------------------------------------------------------------ factories


def _request(message_type: str, content: RecordDict) -> Message:
    metadata = Metadata(
        run_id=5,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return make_message(metadata, content=content)


def _context(node_config: dict[str, str | int], run_config: dict[str, str] | None = None) -> Context:
    return Context(run_id=5, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def _toy_train(msg: Message, context: Context) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))}),
            "metrics": MetricRecord({"loss": 0.5, "auc": float("nan"), "dp-epsilon": 1.25}),
            "site": ConfigRecord({"name": "Toy", "blob": BLOB}),
        }
    )
    return Message(content=content, reply_to=msg)


def _failing_evaluate(msg: Message, context: Context) -> Message:
    raise RuntimeError("disk on fire")


def _toy_app(*, audited: bool = True) -> ClientApp:
    app = ClientApp(mods=[audit_mod] if audited else [])
    app.train()(_toy_train)
    app.evaluate()(_failing_evaluate)
    return app


def _toy_request(message_type: str = MessageType.TRAIN) -> Message:
    return _request(message_type, RecordDict({"config": ConfigRecord({"server-round": 3})}))


# ------------------------------------------------------------------ paths


def test_simulated_audit_file_is_in_its_sites_state_folder(tmp_path: Path) -> None:
    for name in ("site-2", "site-1", ".hidden"):
        (tmp_path / "data" / name).mkdir(parents=True)
    cfg = RunConfig.model_validate({"data": {"root": str(tmp_path / "data")}})
    request = _request(MessageType.TRAIN, RecordDict({"config": ConfigRecord({"run-config": cfg.to_json()})}))

    site = simulated_site_of(request, {"partition-id": 1})

    assert site == tmp_path / "data" / "site-2"
    expected = simulated_state(site, home=tmp_path).audit_log
    assert audit_path({"partition-id": 1}, home=tmp_path, site_dir=site) == expected
    assert simulated_site_of(request, {"partition-id": 5}) is None
    assert simulated_site_of(request, {"site-dir": "/x", "partition-id": 0}) is None


@pytest.mark.parametrize("name", ["s1\n", "../../etc", "...", "x" * 300, "é"])
def test_audit_file_stem_is_always_a_valid_site_name(name: str) -> None:
    from fedeye.client.state import SITE_STEM, site_slug

    assert SITE_STEM.fullmatch(site_slug(name))


def test_audit_path_comes_from_node_config_only(tmp_path: Path) -> None:
    assert audit_path({"audit-log": "/var/log/a.jsonl", "site-dir": "/x"}, home=tmp_path) == Path("/var/log/a.jsonl")
    saint = audit_path({"site-dir": "/data/St Aurelia's/"}, home=tmp_path)
    assert saint == simulated_state(Path("/data/St Aurelia's"), home=tmp_path).audit_log
    assert saint.parent.parent.name.startswith("St-Aurelia-s-")  # the site's own state folder
    assert audit_path({"state-dir": "/srv/site/state"}, home=tmp_path) == Path("/srv/site/state/audit/audit.jsonl")
    assert audit_path({"partition-id": 2}, home=tmp_path) == tmp_path / "audit" / "partition-2.jsonl"
    assert audit_path({}, home=tmp_path, node_id=42) == tmp_path / "audit" / "node-42.jsonl"
    assert audit_path({"site-dir": "/data/.."}, home=tmp_path).is_relative_to(tmp_path / "sites")


def test_coordinator_run_config_cannot_move_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEYE_HOME", str(tmp_path / "home"))
    evil = tmp_path / "elsewhere.jsonl"
    _toy_app()(_toy_request(), _context({"site-dir": "/data/site-a"}, run_config={"audit-log": str(evil)}))
    assert not evil.exists()
    assert len(read_audit(simulated_state(Path("/data/site-a"), home=tmp_path / "home").audit_log)) == 1


# ------------------------------------------------------------------ toy ClientApp


def test_one_line_per_reply_describing_it_exactly(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    app = _toy_app()
    replies = [app(_toy_request(), _context({"audit-log": str(log)})) for _ in range(2)]

    entries = read_audit(log)
    assert len(entries) == 2
    entry, reply = entries[1], replies[1]
    assert entry["run_id"] == 5 and entry["node_id"] == 7 and entry["server_round"] == 3
    assert entry["message_type"] == MessageType.TRAIN and entry["status"] == "ok" and entry["error"] is None
    assert entry["records"] == {"arrays": "ArrayRecord", "metrics": "MetricRecord", "site": "ConfigRecord"}
    assert entry["arrays"] == {"arrays": {"w": {"shape": [2, 3], "dtype": "float32"}}}
    assert entry["metrics"] == {"metrics": {"loss": 0.5, "auc": "NaN", "dp-epsilon": 1.25}}
    assert entry["configs"]["site"]["name"] == "Toy"
    assert entry["configs"]["site"]["blob"] == f"<2 bytes sha256:{sha256(BLOB).hexdigest()}>"
    assert entry["epsilon"] == 1.25
    assert entry["payload_sha256"] == sha256(payload_bytes(reply)).hexdigest()
    assert entry["payload_bytes"] == len(payload_bytes(reply))
    assert entry["time"].endswith("+00:00")


def test_lines_are_strict_json(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _toy_app()(_toy_request(), _context({"audit-log": str(log)}))
    json.loads(log.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_writing_the_log_does_not_change_the_reply(tmp_path: Path) -> None:
    request = _toy_request()
    audited = _toy_app()(request, _context({"audit-log": str(tmp_path / "a.jsonl")}))
    plain = _toy_app(audited=False)(request, _context({}))
    assert payload_bytes(audited) == payload_bytes(plain)
    assert audited.metadata.reply_to_message_id == request.metadata.message_id


def test_failed_clientapp_is_logged_as_error_and_still_raises(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(RuntimeError, match="disk on fire"):
        _toy_app()(_toy_request(MessageType.EVALUATE), _context({"audit-log": str(log)}))
    (entry,) = read_audit(log)
    assert entry["status"] == "error" and "disk on fire" in str(entry["error"])
    assert entry["records"] == {} and entry["epsilon"] is None and entry["server_round"] == 3


def test_audit_file_is_private(tmp_path: Path) -> None:
    log = tmp_path / "new" / "dir" / "audit.jsonl"
    _toy_app()(_toy_request(), _context({"audit-log": str(log)}))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(log.parent.parent.stat().st_mode) == 0o700


def test_unwritable_log_fails_before_the_clientapp_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    calls: list[Message] = []
    app = ClientApp(mods=[audit_mod])
    app.train()(lambda msg, context: calls.append(msg) or Message(RecordDict(), reply_to=msg))

    with pytest.raises(AuditError, match="audit-log"):
        app(_toy_request(), _context({"audit-log": str(blocker / "audit.jsonl")}))
    assert calls == []


def test_describe_reply_is_pure() -> None:
    reply = Message(RecordDict({"m": MetricRecord({"x": [1, 2]})}), reply_to=_toy_request())
    entry: AuditEntry = describe_reply(reply)
    assert entry["metrics"] == {"m": {"x": [1, 2]}} and entry["server_round"] is None


# ------------------------------------------------------------------ the real FedEye ClientApp


@dataclass(frozen=True)
class RealRun:
    cfg: RunConfig
    site_dir: Path
    requests: list[Message]
    replies: list[Message]
    log: Path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """The real train and evaluate functions, audited, on one 30-image site."""
    root = tmp_path_factory.mktemp("audit")
    (site_dir,) = synthesize_sites(root / "sites", sites=1, images_per_site=30, size=32)
    cfg = RunConfig.model_validate({"model": {"img_size": 32}, "training": {"batch_size": 16}})
    app = ClientApp(mods=[audit_mod])
    app.train()(train)
    app.evaluate()(evaluate)
    log = root / "audit" / "site.jsonl"
    context = _context({"site-dir": str(site_dir), "audit-log": str(log)})
    arrays = ArrayRecord(build_model(cfg.model).state_dict())
    requests = [
        _request(
            kind,
            RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"run-config": cfg.to_json(), "server-round": 1, **extra})}
            ),
        )
        for kind, extra in (
            (MessageType.TRAIN, {}),
            (MessageType.EVALUATE, {"split": "test"}),
            (MessageType.EVALUATE, {}),
        )
    ]
    return RealRun(cfg, site_dir, requests, [app(r, context) for r in requests], log)


def test_real_clientapp_gets_one_matching_line_per_message(real_run: RealRun) -> None:
    entries = read_audit(real_run.log)
    assert [e["message_type"] for e in entries] == [r.metadata.message_type for r in real_run.replies]
    for entry, reply in zip(entries, real_run.replies, strict=True):
        assert entry["status"] == "ok" and entry["server_round"] == 1
        assert entry["payload_sha256"] == sha256(payload_bytes(reply)).hexdigest()
        assert entry["arrays"] == {
            name: {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in record.items()}
            for name, record in reply.content.array_records.items()
        }
    assert set(entries[0]["arrays"]["arrays"]) == set(build_model(real_run.cfg.model).state_dict())


def _manifest_secrets(site_dir: Path) -> set[str]:
    """Patient ids and image paths (full and file names) of every manifest row."""
    with (site_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    secrets = {r["patient_id"] for r in rows} | {r["image"] for r in rows} | {Path(r["image"]).name for r in rows}
    return secrets | {Path(r["image"]).stem for r in rows}


def _leaks(reply: Message, secrets: set[str]) -> set[str]:
    """Secrets found in any key or value of the reply, or anywhere in its payload bytes."""
    content = reply.content
    strings = list(content.keys())
    for record in content.array_records.values():
        strings += list(record.keys())
    for values in [*content.metric_records.values(), *content.config_records.values()]:
        strings += [*values.keys(), *(str(v) for v in values.values())]
    payload = payload_bytes(reply)
    return {x for x in secrets if any(x in s for s in strings) or x.encode() in payload}


def test_privacy_scan_catches_a_leak(real_run: RealRun) -> None:
    secrets = _manifest_secrets(real_run.site_dir)
    patient = min(secrets)
    leaky = Message(RecordDict({"site": ConfigRecord({"note": f"hard case {patient}"})}), reply_to=real_run.requests[0])
    assert patient in _leaks(leaky, secrets)


def test_no_outgoing_message_carries_patient_data(real_run: RealRun) -> None:
    state = build_model(real_run.cfg.model).state_dict()
    secrets = _manifest_secrets(real_run.site_dir)
    assert len(secrets) > 30  # ids, image paths, file names, stems
    for reply in real_run.replies:
        for record in reply.content.array_records.values():  # only model parameters and buffers
            assert {k: tuple(a.shape) for k, a in record.items()} == {k: tuple(v.shape) for k, v in state.items()}
        for record in reply.content.metric_records.values():  # aggregates only: no per-image lists
            assert all(isinstance(v, (int, float)) for v in record.values()), dict(record)
        assert _leaks(reply, secrets) == set()
    log_text = real_run.log.read_text()
    assert not [x for x in secrets if x in log_text]


def test_real_dp_training_logs_epsilon_spent(real_run: RealRun, tmp_path: Path) -> None:
    cfg = real_run.cfg.model_copy(
        update={"privacy": real_run.cfg.privacy.model_copy(update={"enabled": True, "epsilon": 50.0})}
    )
    app = ClientApp(mods=[audit_mod])
    app.train()(train)
    log = tmp_path / "dp.jsonl"
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1})
    request = _request(
        MessageType.TRAIN, RecordDict({"arrays": ArrayRecord(build_model(cfg.model).state_dict()), "config": config})
    )

    reply = app(request, _context({"site-dir": str(real_run.site_dir), "audit-log": str(log)}))

    (entry,) = read_audit(log)
    assert entry["epsilon"] == reply.content["metrics"]["dp-epsilon"] > 0


def _create_after(barrier: Any, path: Path) -> None:
    barrier.wait()
    ensure_audit_file(path)


def test_many_sites_create_one_audit_folder_at_once(tmp_path: Path) -> None:
    """The first demo on a fresh machine: simulated sites start together and race to make the folder."""
    ctx = multiprocessing.get_context("fork")
    folder = tmp_path / "home" / "audit"
    barrier = ctx.Barrier(12)
    procs = [ctx.Process(target=_create_after, args=(barrier, folder / f"site-{i}.jsonl")) for i in range(12)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * 12
    assert len(list(folder.iterdir())) == 12 and folder.stat().st_mode & 0o777 == 0o700


def test_threads_creating_one_audit_folder_all_succeed(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b" / "audit"
    barrier = threading.Barrier(16)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: _create_after(barrier, folder / f"{i}.jsonl"), range(16)))
    assert len(results) == 16 and len(list(folder.iterdir())) == 16


@pytest.mark.parametrize(
    "damaged",
    [b"\x00\xff not text\n", b"{not json\n", b"[1, 2]\n", b'"a string"\n'],
    ids=["bytes", "json", "list", "str"],
)
def test_a_damaged_audit_line_is_an_audit_error_naming_it(tmp_path: Path, damaged: bytes) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"run-id": "r1"}\n\n' + damaged)

    with pytest.raises(AuditError, match=r"line 3 of the audit log .*audit.jsonl is not a JSON object"):
        read_audit(log)
