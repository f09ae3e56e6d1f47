"""Contract tests of the run store, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedeye.errors import StoreError
from fedeye.server.store import MAX_NODE_ID, RunStore, mask_url, resolve_db_url

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"strategy": {"name": "fedavg", "fraction-train": 1.0}, "num-rounds": 3, "seed": 7}


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:
    with RunStore(store_url) as opened:
        yield opened


def _new_run(store: RunStore, name: str = "glaucoma-fedavg") -> str:
    return store.create_run(name=name, strategy="fedavg", config=CONFIG, num_rounds=3, num_sites=2)


# ------------------------------------------------------------------ runs


def test_create_and_get_run(store: RunStore) -> None:
    run_id = _new_run(store)

    detail = store.get_run(run_id)

    assert run_id.startswith("r-")
    assert detail.run.run_id == run_id
    assert detail.run.status == "running"
    assert detail.run.rounds_done == 0
    assert detail.run.started_at.tzinfo is not None
    assert detail.run.ended_at is None
    assert detail.config == CONFIG
    assert (detail.rounds, detail.site_metrics, detail.artifacts) == ((), (), ())


def test_list_runs_newest_first_with_rounds_done(store: RunStore) -> None:
    first = _new_run(store, "first")
    second = _new_run(store, "second")
    store.record_round(second, server_round=1, train_metrics={"loss": 0.9})
    store.record_round(second, server_round=2, train_metrics={"loss": 0.7})

    runs = store.list_runs()

    assert [r.run_id for r in runs] == [second, first]
    assert [r.rounds_done for r in runs] == [2, 0]
    assert runs[0].name == "second" and runs[0].num_sites == 2 and runs[0].num_rounds == 3


def test_records_are_frozen_values(store: RunStore) -> None:
    run_id = _new_run(store)

    detail = store.get_run(run_id)

    with pytest.raises(dataclasses.FrozenInstanceError):
        detail.run.status = "failed"  # type: ignore[misc]


def test_config_with_paths_is_stored_as_json(store: RunStore) -> None:
    run_id = store.create_run(
        name="paths",
        strategy="fedprox",
        config={"model-dir": Path("/models")},
        num_rounds=1,
        num_sites=1,
    )

    assert store.get_run(run_id).config == {"model-dir": "/models"}


def test_finish_run_sets_status_time_and_error(store: RunStore) -> None:
    run_id = _new_run(store)

    store.finish_run(run_id, status="failed", error="site-b dropped out")

    run = store.get_run(run_id).run
    assert run.status == "failed"
    assert run.error == "site-b dropped out"
    assert run.ended_at is not None and run.ended_at >= run.started_at


def test_finish_run_rejects_unknown_status(store: RunStore) -> None:
    run_id = _new_run(store)

    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run(run_id, status="done")  # type: ignore[arg-type]


def test_get_run_accepts_unambiguous_prefix(store: RunStore) -> None:
    run_id = _new_run(store)

    assert store.get_run(run_id[:-1]).run.run_id == run_id


def test_ambiguous_prefix_is_refused(store: RunStore) -> None:
    _new_run(store, "a")
    _new_run(store, "b")

    with pytest.raises(StoreError, match="ambiguous"):
        store.get_run("r-")


def test_unknown_run_id_names_id_and_next_step(store: RunStore) -> None:
    _new_run(store)

    with pytest.raises(StoreError) as caught:
        store.get_run("r-nope")

    message = str(caught.value)
    assert "no run 'r-nope' in" in message
    assert "fedeye runs list" in message


@pytest.mark.parametrize("prefix", ["", "%", "r_"])
def test_wildcards_are_not_prefixes(store: RunStore, prefix: str) -> None:
    _new_run(store)

    with pytest.raises(StoreError, match="no run"):
        store.get_run(prefix)


def test_writes_to_unknown_run_raise_store_error(store: RunStore, tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"x")

    with pytest.raises(StoreError, match="no run"):
        store.record_round("r-missing", server_round=1, train_metrics={"loss": 1.0})
    with pytest.raises(StoreError, match="no run"):
        store.finish_run("r-missing", status="finished")
    with pytest.raises(StoreError, match="no run"):
        store.record_artifact("r-missing", server_round=1, kind="checkpoint", path=tmp_path / "m.pt")


# ---------------------------------------------------------------- rounds


def test_record_round_upserts_train_then_evaluate(store: RunStore) -> None:
    run_id = _new_run(store)
    store.record_round(run_id, server_round=1, train_metrics={"loss": 0.8}, num_sites_trained=2)
    started = store.get_run(run_id).rounds[0].started_at

    store.record_round(run_id, server_round=1, eval_metrics={"auc": 0.81}, num_sites_evaluated=1)

    (round_one,) = store.get_run(run_id).rounds
    assert round_one.server_round == 1
    assert round_one.train_metrics == {"loss": 0.8}
    assert round_one.eval_metrics == {"auc": 0.81}
    assert (round_one.num_sites_trained, round_one.num_sites_evaluated) == (2, 1)
    assert round_one.started_at == started
    assert round_one.ended_at is not None and round_one.ended_at >= started


def test_rounds_come_back_in_order(store: RunStore) -> None:
    run_id = _new_run(store)
    for server_round in (3, 1, 2):
        store.record_round(run_id, server_round=server_round, train_metrics={"loss": 1.0})

    rounds = store.get_run(run_id).rounds

    assert [r.server_round for r in rounds] == [1, 2, 3]


def test_non_finite_metrics_are_stored_as_none(store: RunStore) -> None:
    run_id = _new_run(store)

    store.record_round(run_id, server_round=1, eval_metrics={"auc": math.nan, "loss": math.inf})

    assert store.get_run(run_id).rounds[0].eval_metrics == {"auc": None, "loss": None}


# ---------------------------------------------------------- site metrics


def test_site_metrics_keep_64_bit_node_ids(store: RunStore) -> None:
    run_id = _new_run(store)
    metrics = {"auc": 0.9, "accuracy": 0.85, "num-examples": 120}

    store.record_site_metrics(
        run_id,
        server_round=1,
        phase="evaluate",
        site="moorfields",
        node_id=MAX_NODE_ID,
        num_examples=120,
        metrics=metrics,
    )
    store.record_site_metrics(
        run_id,
        server_round=1,
        phase="train",
        site="moorfields",
        node_id=MAX_NODE_ID,
        num_examples=480,
        metrics={"loss": 0.4},
    )

    evaluated = store.site_metrics(run_id, phase="evaluate")
    assert len(evaluated) == 1
    assert evaluated[0].node_id == 2**64 - 1
    assert evaluated[0].metrics == {"auc": 0.9, "accuracy": 0.85, "num-examples": 120.0}
    assert evaluated[0].status == "ok"
    assert [m.phase for m in store.site_metrics(run_id)] == ["evaluate", "train"]
    assert store.get_run(run_id).last_evaluated_round() == 1


def test_dropped_site_is_recorded(store: RunStore) -> None:
    run_id = _new_run(store)

    store.record_site_metrics(
        run_id,
        server_round=2,
        phase="train",
        site="site-b",
        node_id=0,
        num_examples=0,
        metrics={},
        status="dropped",
    )

    (record,) = store.site_metrics(run_id)
    assert (record.status, record.node_id, record.metrics) == ("dropped", 0, {})


@pytest.mark.parametrize("node_id", [-1, 2**64])
def test_node_id_outside_uint64_is_refused(store: RunStore, node_id: int) -> None:
    run_id = _new_run(store)

    with pytest.raises(ValueError, match="unsigned 64-bit"):
        store.record_site_metrics(
            run_id,
            server_round=1,
            phase="train",
            site="s",
            node_id=node_id,
            num_examples=1,
            metrics={},
        )


# -------------------------------------------------------------- artifacts


def test_record_artifact_hashes_file(store: RunStore, tmp_path: Path) -> None:
    run_id = _new_run(store)
    model = tmp_path / "final.pt"
    model.write_bytes(b"weights" * 1000)

    record = store.record_artifact(run_id, server_round=3, kind="final-model", path=model)

    assert record.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert record.size_bytes == 7000
    assert record.path == str(model.resolve())
    assert store.get_run(run_id).artifacts == (record,)
    assert store.get_run(run_id).final_model() == record


def test_latest_checkpoint_is_highest_round(store: RunStore, tmp_path: Path) -> None:
    run_id = _new_run(store)
    for server_round in (2, 1):
        path = tmp_path / f"round-{server_round}.pt"
        path.write_bytes(bytes([server_round]))
        store.record_artifact(run_id, server_round=server_round, kind="checkpoint", path=path)

    latest = store.latest_checkpoint(run_id)

    assert latest is not None and latest.server_round == 2
    assert latest.path.endswith("round-2.pt")


def test_latest_checkpoint_none_without_checkpoints(store: RunStore) -> None:
    assert store.latest_checkpoint(_new_run(store)) is None


def test_missing_artifact_file_raises(store: RunStore, tmp_path: Path) -> None:
    run_id = _new_run(store)

    with pytest.raises(StoreError, match="is not a file"):
        store.record_artifact(run_id, server_round=1, kind="checkpoint", path=tmp_path / "no.pt")


# ------------------------------------------------------------- open/close


def test_reopening_keeps_data(store_url: str) -> None:
    with RunStore(store_url) as first:
        run_id = _new_run(first)

    with RunStore(store_url) as second:
        assert second.get_run(run_id).run.name == "glaucoma-fedavg"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("url", ["nosuchdb://host/x", "not a url", "sqlite:////proc/fedeye/x.db"])
def test_bad_url_raises_store_error(url: str) -> None:
    with pytest.raises(StoreError, match="run store"):
        RunStore(url)


def test_unreachable_server_masks_password() -> None:
    url = f"postgresql+psycopg2://bob:hunter2@127.0.0.1:{_closed_port()}/fedeye"

    with pytest.raises(StoreError) as caught:
        RunStore(url)

    message = str(caught.value)
    assert "bob:***@127.0.0.1" in message
    assert "hunter2" not in message
    assert "database server is running" in message


def test_wrong_password_on_real_server_is_store_error(postgres_server: object) -> None:
    url = postgres_server.url("postgres").replace(postgres_server.password, "wrong-pw")  # type: ignore[attr-defined]

    with pytest.raises(StoreError) as caught:
        RunStore(url)

    assert "wrong-pw" not in str(caught.value)
    assert "password authentication failed" in str(caught.value)


def test_driver_message_masks_only_the_whole_password() -> None:
    from fedeye.server.store import _reason

    class Failure:
        orig = 'connection to server at "h", port 1 failed: p rejected'

    reason = _reason(Failure(), "postgresql://u:p@h:1/d")  # type: ignore[arg-type]

    assert reason == 'connection to server at "h", port 1 failed: *** rejected'


def test_mask_url_hides_password() -> None:
    assert mask_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


# ---------------------------------------------------------- resolve_db_url


def test_resolve_prefers_explicit_then_env_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEYE_DB", "postgresql://u@h/env")

    assert resolve_db_url("sqlite:///x.db", default_dir=tmp_path) == "sqlite:///x.db"
    assert resolve_db_url(None, default_dir=tmp_path) == "postgresql://u@h/env"
    monkeypatch.delenv("FEDEYE_DB")
    default = resolve_db_url(None, default_dir=tmp_path / "home" / ".fedeye")
    assert default == f"sqlite:///{tmp_path / 'home' / '.fedeye' / 'fedeye.db'}"
    assert (tmp_path / "home" / ".fedeye").is_dir()


def test_resolve_turns_file_path_into_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDEYE_DB", raising=False)
    monkeypatch.chdir(tmp_path)

    url = resolve_db_url("runs/my.db", default_dir=tmp_path / "unused")

    assert url == f"sqlite:///{tmp_path.resolve() / 'runs' / 'my.db'}"
    assert (tmp_path / "runs").is_dir()
    assert not (tmp_path / "unused").exists()


# ------------------------------------------------------- concurrency (SQLite)

WRITER = """
import sys
from fedeye.server.store import RunStore
store = RunStore(sys.argv[1])
run_id = sys.argv[2]
for server_round in range(1, 41):
    store.record_round(run_id, server_round=server_round, train_metrics={"loss": 0.5})
    for site in ("a", "b"):
        store.record_site_metrics(run_id, server_round=server_round, phase="evaluate", site=site,
                                  node_id=2**64 - 1, num_examples=10, metrics={"auc": 0.5})
    store.record_round(run_id, server_round=server_round, eval_metrics={"auc": 0.5})
store.finish_run(run_id, status="finished")
"""


def _poll(url: str, run_id: str, errors: list[BaseException], stop: threading.Event) -> None:
    store = RunStore(url)
    try:
        while not stop.is_set():
            store.list_runs()
            store.get_run(run_id)
    except BaseException as exc:  # noqa: BLE001 - reported to the test thread
        errors.append(exc)


def test_sqlite_writer_process_and_reader_threads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    run_id = _new_run(RunStore(url))
    thread_run = _new_run(RunStore(url), "threaded")
    errors: list[BaseException] = []
    stop = threading.Event()
    readers = [threading.Thread(target=_poll, args=(url, run_id, errors, stop)) for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    for reader in readers:
        reader.start()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, run_id], env=env)
    store = RunStore(url)
    for server_round in range(1, 41):  # a second writer, in this process, at the same time
        store.record_round(thread_run, server_round=server_round, train_metrics={"loss": 0.1})
    returncode = writer.wait(timeout=120)
    stop.set()
    for reader in readers:
        reader.join(timeout=30)

    assert returncode == 0
    assert errors == []
    detail = store.get_run(run_id)
    assert detail.run.status == "finished"
    assert len(detail.rounds) == 40 and len(detail.site_metrics) == 80
    assert all(r.eval_metrics == {"auc": 0.5} for r in detail.rounds)
    assert store.get_run(thread_run).run.rounds_done == 40


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    _new_run(RunStore(url))

    assert (tmp_path / "wal.db-wal").exists()


def test_privacy_ledger_roundtrip_in_order(store: RunStore) -> None:
    from fedeye.server.store import PrivacyRecord

    run_id = _new_run(store)
    second = PrivacyRecord(2, "site", "b", 2.5, 1e-4, 8.0, 1.1, 0.1, 40, "rdp", "ok")
    first = PrivacyRecord(1, "site", "b", 1.2, 1e-4, 8.0, 1.1, 0.1, 20, "rdp", "ok")
    federation = PrivacyRecord(1, "federation", "(federation)", 0.9, 1e-3, None, 1.0, 1.0, 1, "rdp", "ok")
    for entry in (second, first, federation):
        store.record_privacy(run_id, entry)
    assert store.privacy_ledger(run_id) == [federation, first, second]
    assert store.get_run(run_id).privacy == (federation, first, second)
