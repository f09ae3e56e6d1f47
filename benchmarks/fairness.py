"""Worst-site vs mean test AUC: FedAvg against FairFedAvg (q-FFL weighting).

Synthesizes 5 hospitals with distinct acquisition profiles
(``synthesize_sites(out, sites=5, images_per_site=200, size=64, seed=...)``),
runs the demo's model and training settings through the Simulation Engine
once with ``fedavg`` and once with ``fairfedavg``, and reads each site's
final-model test AUC from the run store (phase ``test``).

Target: FairFedAvg raises the worst site's test AUC by >= 2 points while
the mean over sites drops by <= 1 point. Exits 0 whether or not it is met.
Each arm runs in its own subprocess (a fresh Ray per run).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_WORST_GAIN = 0.02
TARGET_MEAN_LOSS = 0.01
ARMS = ("fedavg", "fairfedavg")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds per run (default 5)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic sites and of training (default 3)")
    parser.add_argument("--q", type=float, default=None, help="FairFedAvg's q (default: the strategy's DEFAULT_Q)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder, removed after)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)  # internal: run one arm
    return parser.parse_args(argv)


def run_config(out: Path, site_root: Path, *, strategy: str, rounds: int, seed: int) -> Any:
    """The demo preset with another strategy, seed and store."""
    from fedeye.cli.demo import demo_config

    cfg = demo_config(out, site_root=site_root, rounds=rounds)
    return cfg.model_copy(
        update={
            "name": f"fairness-{strategy}",
            "strategy": cfg.strategy.model_copy(
                update={"name": strategy, "min_train_nodes": 5, "min_evaluate_nodes": 5, "min_available_nodes": 5}
            ),
            "training": cfg.training.model_copy(update={"seed": seed}),
        }
    )


def run_arm(args: argparse.Namespace) -> None:
    """Child process: one simulated run; prints its run id as the last line."""
    import fedeye.strategies.fairfedavg as fair
    from fedeye.compose.simulation import simulate

    if args.q is not None:
        fair.FairFedAvg.q = args.q
    out = args.out / args.arm
    cfg = run_config(out, args.out / "sites", strategy=args.arm, rounds=args.rounds, seed=args.seed)
    print(simulate(cfg).run_id, flush=True)


def spawn_arm(arm: str, args: argparse.Namespace) -> float:
    """Run one arm in a subprocess; return its wall seconds."""
    command = [
        sys.executable,
        __file__,
        "--arm",
        arm,
        "--out",
        str(args.out),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
    ]
    command += ["--q", str(args.q)] if args.q is not None else []
    start = time.perf_counter()
    log = args.out / f"{arm}.log"
    with log.open("w") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        ).returncode
    if code != 0:
        raise SystemExit(f"{arm} run failed (exit {code}); see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def test_aucs(out: Path) -> dict[str, float]:
    """Each site's final-model test AUC of the only run in ``out/fedeye.db``."""
    from fedeye.server.store import RunStore, resolve_db_url

    with RunStore(resolve_db_url(str(out / "fedeye.db"), default_dir=out)) as store:
        detail = store.get_run(store.list_runs()[0].run_id)
    return {
        m.site: float("nan") if m.metrics.get("auc") is None else float(m.metrics["auc"])  # type: ignore[arg-type]
        for m in detail.site_metrics
        if m.phase == "test"
    }


def summarise(aucs: dict[str, float]) -> dict[str, float]:
    from fedeye.fairness.metrics import cross_site_summary

    return cross_site_summary(aucs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.arm:
        run_arm(args)
        return
    with tempfile.TemporaryDirectory(prefix="fedeye-fairness-") as tmp:
        args.out = (args.out or Path(tmp)).resolve()
        report(measure(args), args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from fedeye.sites.synth import synthesize_sites
    from fedeye.strategies.fairfedavg import DEFAULT_Q

    args.out.mkdir(parents=True, exist_ok=True)
    synthesize_sites(args.out / "sites", sites=5, images_per_site=200, size=64, seed=args.seed, overwrite=True)
    results: dict[str, Any] = {
        "rounds": args.rounds,
        "seed": args.seed,
        "q": args.q if args.q is not None else DEFAULT_Q,
    }
    for arm in ARMS:
        print(f"running {arm} ({args.rounds} rounds, 5 sites) ...", flush=True)
        seconds = spawn_arm(arm, args)
        aucs = test_aucs(args.out / arm)
        results[arm] = {"seconds": round(seconds, 1), "site_auc": aucs, **summarise(aucs)}
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    base, fair = results["fedavg"], results["fairfedavg"]
    sites = sorted(base["site_auc"])
    print(
        f"\ntest AUC per site (5 synthetic sites x 200 images, 64 px, {results['rounds']} rounds, seed {results['seed']}, q={results['q']:g})"
    )
    width = max(len(s) for s in [*sites, "worst site (ES-AUC: sites as groups)"]) + 2
    print("  " + "".ljust(width) + "    fedavg  fairfedavg    change")
    for site in sites:
        a, b = base["site_auc"][site], fair["site_auc"][site]
        print(f"  {site:<{width}}{a:10.3f}{b:12.3f}{b - a:+10.3f}")
    for key, label in (
        ("mean-auc", "mean over sites"),
        ("worst-auc", "worst site"),
        ("gap", "gap (max - min)"),
        ("es-auc", "ES-AUC (sites as groups)"),
    ):
        print(f"  {label:<{width}}{base[key]:10.3f}{fair[key]:12.3f}{fair[key] - base[key]:+10.3f}")
    print(f"  {'wall seconds':<{width}}{base['seconds']:10.0f}{fair['seconds']:12.0f}")
    worst_gain, mean_loss = fair["worst-auc"] - base["worst-auc"], base["mean-auc"] - fair["mean-auc"]
    ok = math.isfinite(worst_gain) and worst_gain >= TARGET_WORST_GAIN and mean_loss <= TARGET_MEAN_LOSS
    print(f"\nworst-site AUC change: {worst_gain * 100:+.1f} points (target >= +{TARGET_WORST_GAIN * 100:.0f})")
    print(f"mean AUC change:       {-mean_loss * 100:+.1f} points (target >= -{TARGET_MEAN_LOSS * 100:.0f})")
    print(f"{'PASS' if ok else 'MISS'}: fairfedavg vs fedavg")
    results["verdict"] = "PASS" if ok else "MISS"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
