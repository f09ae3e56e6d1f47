"""The compute of a federated run without the platform: plain train_local/evaluate_local calls.

:func:`run_rounds` replays a FedAvg run's work (every site trains from the
global weights, the server averages weighted by examples, every site
evaluates, and the final model is tested on every site) either in this
process (``workers=0``) or on a pool of ``workers`` spawned processes, each
with its own torch threads, a model built once and every site's data
decoded once before timing starts. Per-phase wall times are returned.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

State = dict[str, np.ndarray]
_WORKER: dict[str, Any] = {}  # this process's LocalSites when it is a pool worker


class LocalSites:
    """Every site's datasets and one reusable model, in one process."""

    def __init__(self, cfg_json: str, site_dirs: Sequence[str], *, threads: int) -> None:
        import torch

        from fedeye.config import RunConfig
        from fedeye.models import build_model
        from fedeye.sites.base import open_site
        from fedeye.sites.dataset import SiteDataset

        torch.set_num_threads(threads)
        self.cfg = RunConfig.model_validate_json(cfg_json)
        size, augment = int(self.cfg.model.img_size or 0), self.cfg.training.augment
        self.model = build_model(self.cfg.model, load_backbone=False)
        self.data = {
            (d, split): SiteDataset(open_site(Path(d)), split, image_size=size, augment=augment and split == "train")
            for d in site_dirs
            for split in ("train", "val", "test")
        }

    def train(self, site: str, state: State, server_round: int) -> tuple[State, int, float]:
        """Train from ``state``; return the new weights, the example count and train_local's own seconds."""
        from fedeye.client.training import train_local
        from fedeye.models import load_state, model_state

        load_state(self.model, _tensors(state))
        result = train_local(self.model, self.data[(site, "train")], cfg=self.cfg.training, server_round=server_round)
        return {k: v.numpy() for k, v in model_state(self.model).items()}, result.num_examples, result.seconds

    def evaluate(self, site: str, state: State, split: str) -> float:
        from fedeye.client.training import evaluate_local
        from fedeye.models import load_state

        load_state(self.model, _tensors(state))
        result = evaluate_local(self.model, self.data[(site, split)], batch_size=self.cfg.training.batch_size * 2)
        return float(result.metrics.get("auc", float("nan")))


def _tensors(state: State) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v) for k, v in state.items()}


def _init_worker(cfg_json: str, site_dirs: Sequence[str], threads: int) -> None:
    _WORKER["sites"] = LocalSites(cfg_json, site_dirs, threads=threads)


def _ready(_: int) -> int:
    return len(_WORKER["sites"].data)


def _train_task(args: tuple[str, State, int]) -> tuple[State, int, float]:
    return _WORKER["sites"].train(*args)  # type: ignore[no-any-return]


def _evaluate_task(args: tuple[str, State, str]) -> float:
    return _WORKER["sites"].evaluate(*args)  # type: ignore[no-any-return]


def fedavg(results: Sequence[tuple[State, int, float]]) -> State:
    """Example-weighted mean of the sites' weights (what Flower's FedAvg computes)."""
    total = sum(r[1] for r in results)
    first = results[0][0]
    return {k: np.sum([r[0][k] * (r[1] / total) for r in results], axis=0).astype(first[k].dtype) for k in first}


@dataclass
class LocalTimes:
    """Wall seconds of the replayed run, by phase."""

    setup: float = 0.0  # process start, model build, decoding every site's data
    rounds: list[float] = field(default_factory=list)  # train + average + evaluate, per round
    train_seconds: list[float] = field(default_factory=list)  # train_local's own seconds, summed over sites, per round
    final_test: float = 0.0
    test_auc: list[float] = field(default_factory=list)


def run_rounds(
    cfg_json: str, site_dirs: Sequence[str], initial: State, *, rounds: int, workers: int, threads: int
) -> LocalTimes:
    """Replay ``rounds`` FedAvg rounds plus the final test; ``workers=0`` runs in this process."""
    times = LocalTimes()
    start = time.perf_counter()
    if workers == 0:
        sites = LocalSites(cfg_json, site_dirs, threads=threads)
        times.setup = time.perf_counter() - start
        _replay(times, site_dirs, initial, rounds, lambda f, items: [f(*a) for a in items], sites.train, sites.evaluate)
        return times
    with mp.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(cfg_json, list(site_dirs), threads)
    ) as pool:
        pool.map(_ready, range(workers), chunksize=1)  # wait until every worker has its data
        times.setup = time.perf_counter() - start
        mapper = lambda f, items: pool.map(f, items, chunksize=1)
        _replay(times, site_dirs, initial, rounds, mapper, _train_task, _evaluate_task)
    return times


def _replay(
    times: LocalTimes,
    site_dirs: Sequence[str],
    state: State,
    rounds: int,
    mapper: Callable[..., list[Any]],
    train: Callable[..., Any],
    evaluate: Callable[..., Any],
) -> None:
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        results = mapper(train, [(d, state, server_round) for d in site_dirs])
        state = fedavg(results)
        mapper(evaluate, [(d, state, "val") for d in site_dirs])
        times.rounds.append(time.perf_counter() - start)
        times.train_seconds.append(sum(r[2] for r in results))
    start = time.perf_counter()
    times.test_auc = mapper(evaluate, [(d, state, "test") for d in site_dirs])
    times.final_test = time.perf_counter() - start
