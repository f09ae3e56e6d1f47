"""Wall time of ``fedeye demo`` from a fresh folder, and whether it learned.

Runs ``fedeye demo --out <fresh folder>`` as a subprocess, so the figure
includes everything a new user waits for: interpreter and import start-up,
synthesizing the sites, Ray start-up, every round, the final test and shutdown.
It then reads the run store the demo wrote and checks that the final global
model's test AUC is above 0.5 on every site.

Target: wall time <= 180 s on 2 CPU cores, with every site's test AUC > 0.5.
Exits 0 whether or not the target is met.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    NOISY_CORES,
    TreeMonitor,
    ensure_ray_stopped,
    machine,
    print_table,
    verdict,
    wait_for_quiet,
    write_json,
)

TARGET_SECONDS = 180.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=None, help="pass --sites to the demo (default: the demo's own)")
    parser.add_argument("--rounds", type=int, default=None, help="pass --rounds to the demo (default: the demo's own)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="demo folder; must not exist (default: a fresh temp folder, removed after)",
    )
    parser.add_argument("--log", type=Path, default=None, help="keep the demo's console output in this file")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long until other programs leave the CPUs idle (default: do not wait)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; the demo would reuse its sites and skip synthesis. Pass a new folder.")
    return args


def fedeye_command() -> list[str]:
    """The ``fedeye`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "fedeye"
    if script.is_file():
        return [str(script)]
    found = shutil.which("fedeye")
    return [found] if found else [sys.executable, "-c", "from fedeye.cli.main import main; main()"]


def run_demo(out: Path, args: argparse.Namespace, log: Path) -> tuple[float, int]:
    """Run the demo; return its wall seconds and exit code."""
    command = [*fedeye_command(), "demo", "--out", str(out)]
    command += ["--sites", str(args.sites)] if args.sites else []
    command += ["--rounds", str(args.rounds)] if args.rounds else []
    print("$ " + " ".join(command), flush=True)
    with log.open("w") as handle:
        start = time.perf_counter()
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        ).returncode
        return time.perf_counter() - start, code


def test_aucs(out: Path) -> dict[str, float | None]:
    """Each site's test AUC of the (only) run in the demo's store."""
    from fedeye.server.store import RunStore, resolve_db_url

    with RunStore(resolve_db_url(str(out / "fedeye.db"), default_dir=out)) as store:
        runs = store.list_runs()
        if not runs:
            return {}
        detail = store.get_run(runs[0].run_id)
    return {m.site: m.metrics.get("auc") for m in detail.site_metrics if m.phase == "test"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fedeye-bench-demo-"))
    out = args.out or tmp / "demo"
    log = args.log or tmp / "demo.log"
    monitor = TreeMonitor(interval=1.0)
    try:
        wait_for_quiet(args.wait_quiet)
        with monitor:
            started = time.perf_counter()
            seconds, code = run_demo(out, args, log)
        foreign = monitor.foreign_load(started, started + seconds)
        aucs = test_aucs(out) if code == 0 else {}
        if code != 0:
            print(
                f"fedeye demo exited {code}; last lines of its output:\n"
                + "\n".join(log.read_text().splitlines()[-30:])
            )
        results = summarize(seconds, code, aucs, foreign, monitor)
    finally:
        left = ensure_ray_stopped(monitor)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Ray processes left after the demo: {left or 'none'}")
    write_json(
        args.json,
        {
            "benchmark": "demo_time",
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": machine(),
            **results,
            "ray_left": left,
        },
    )
    return 0


def summarize(
    seconds: float, code: int, aucs: dict[str, float | None], foreign: float, monitor: TreeMonitor
) -> dict[str, Any]:
    """Print the per-site AUCs and the verdict; return the figures."""
    print_table(
        "final global model, test split",
        ["site", "AUC"],
        [[site, "-" if auc is None else f"{auc:.3f}"] for site, auc in sorted(aucs.items())],
    )
    learned = bool(aucs) and all(auc is not None and math.isfinite(auc) and auc > 0.5 for auc in aucs.values())
    ok = code == 0 and learned and seconds <= TARGET_SECONDS
    print(
        f"\nfedeye demo wall time: {seconds:.1f} s   target <= {TARGET_SECONDS:.0f} s   {verdict(seconds, TARGET_SECONDS)}"
    )
    print(f"every site's test AUC > 0.5: {'yes' if learned else 'NO'}   exit code {code}")
    print(
        f"peak memory of the process tree: RSS {monitor.peak_rss / 2**30:.2f} GiB, PSS {monitor.peak_pss / 2**30:.2f} GiB"
    )
    print(
        f"foreign CPU load during the demo: {foreign:.2f} cores"
        + ("  (WARNING: another program competed; the time is inflated)" if foreign > NOISY_CORES else "")
    )
    print(f"overall: {'PASS' if ok else 'MISS'}")
    return {
        "seconds": seconds,
        "exit_code": code,
        "test_auc": aucs,
        "all_auc_above_half": learned,
        "target_seconds": TARGET_SECONDS,
        "pass": ok,
        "foreign_cpu_load": foreign,
        "peak_rss_bytes": monitor.peak_rss,
        "peak_pss_bytes": monitor.peak_pss,
    }


if __name__ == "__main__":
    sys.exit(main())
