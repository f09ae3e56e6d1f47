"""The ``fedeye`` command line: thin commands over the domain functions."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.text import Text

from fedeye.cli._common import (
    Cell,
    Column,
    JsonOption,
    check_output_file,
    console,
    err_console,
    exits_cleanly,
    print_json,
    print_table,
)
from fedeye.cli.adapt import adapt_command, calibrate_command
from fedeye.cli.benchmark import benchmark_app
from fedeye.cli.dashboard import dashboard_command
from fedeye.cli.operate import coordinator_start, run_app, site_start
from fedeye.cli.pretrain import pretrain_command
from fedeye.cli.provision import coordinator_app, site_init
from fedeye.cli.report import report_command
from fedeye.cli.runs import runs_app
from fedeye.cli.site_admin import site_approve, site_dashboard, site_deny, site_runs
from fedeye.cli.site_cache import cache_app
from fedeye.cli.site_status import site_status_command
from fedeye.client.state import fedeye_home
from fedeye.errors import ConfigError
from fedeye.fairness.operating_point import Calibration

if TYPE_CHECKING:
    from fedeye.compose.simulation import SimulationResult
    from fedeye.config import RunConfig
    from fedeye.server.store import SiteMetricRecord

app = typer.Typer(
    name="fedeye",
    help="FedEye: federated, privacy-preserving learning for ophthalmology on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(runs_app, name="runs")
app.command("report")(report_command)
app.command("dashboard")(dashboard_command)
app.command("pretrain")(pretrain_command)
site_app = typer.Typer(help="Work with one site's data.", no_args_is_help=True)
sites_app = typer.Typer(help="Work with several sites (synthetic hospitals).", no_args_is_help=True)
app.add_typer(site_app, name="site")
site_app.command("init")(site_init)
site_app.command("start")(site_start)
site_app.command("runs")(site_runs)
site_app.command("approve")(site_approve)
site_app.command("deny")(site_deny)
site_app.command("dashboard")(site_dashboard)
site_app.command("status")(site_status_command)
site_app.add_typer(cache_app, name="cache")
coordinator_app.command("start")(coordinator_start)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(run_app, name="run")
app.add_typer(sites_app, name="sites")
app.add_typer(benchmark_app, name="benchmark")
app.command("calibrate")(calibrate_command)
app.command("adapt")(adapt_command)

Modality = Literal["fundus", "oct"]
SITE_METRICS = ("auc", "accuracy", "sensitivity", "specificity")
BackboneOption = Annotated[
    Path | None,
    typer.Option("--backbone-weights", help="Local timm- or RETFound-format checkpoint to start the backbone from."),
]


@site_app.command("check")
@exits_cleanly
def site_check(
    site_dir: Annotated[Path, typer.Argument(help="The site folder (with manifest.csv).")],
    as_json: JsonOption = False,
) -> None:
    """Validate a site folder and print a summary; exit 1 listing every problem."""
    from fedeye.cli.site_check import print_check_report
    from fedeye.sites.check import check_site

    report = check_site(site_dir)
    print_check_report(report, as_json=as_json)
    if not report.ok:
        raise typer.Exit(1)


@sites_app.command("synth")
@exits_cleanly
def sites_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the site folders into.")],
    sites: Annotated[int, typer.Option(min=1, max=100, help="Number of hospitals.")] = 4,
    images_per_site: Annotated[int, typer.Option(min=10, max=100_000, help="Images per hospital.")] = 200,
    modality: Annotated[str, typer.Option(help="fundus or oct.")] = "fundus",
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Same seed, same files.")] = 0,
    size: Annotated[int, typer.Option(min=32, max=2048, help="Image side in pixels.")] = 128,
    overwrite: Annotated[bool, typer.Option(help="Replace existing site folders.")] = False,
) -> None:
    """Write synthetic hospital sites (see fedeye/sites/README.md for the data sheet)."""
    from fedeye.sites.synth import synthesize_sites

    if modality not in ("fundus", "oct"):
        raise typer.BadParameter("must be 'fundus' or 'oct'", param_hint="--modality")
    paths = synthesize_sites(
        out,
        sites=sites,
        images_per_site=images_per_site,
        modality=modality,  # type: ignore[arg-type]
        seed=seed,
        size=size,
        overwrite=overwrite,
    )
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"check one with: [bold]fedeye site check {paths[0]}[/]")


@app.command()
@exits_cleanly
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run file (TOML).")],
    db: Annotated[
        str | None, typer.Option(help="Run store URL or SQLite path (default: FEDEYE_DB or output.dir).")
    ] = None,
    backbone_weights: BackboneOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run and its per-site results as JSON (progress on stderr).")
    ] = False,
) -> None:
    """Run any configured experiment in Flower's Simulation Engine."""
    from fedeye.config import load_run_config

    cfg = load_run_config(config)
    if db:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"db": db})})
    _simulate_and_report(_with_backbone(cfg, backbone_weights), as_json=as_json)


def _with_backbone(cfg: RunConfig, weights: Path | None) -> RunConfig:
    """Override ``model.backbone_weights`` and check the file before any process starts."""
    if weights is None:
        return cfg
    from fedeye.models import build_model

    model_cfg = cfg.model.model_copy(update={"backbone_weights": weights.resolve()})
    build_model(model_cfg)  # raises ModelError naming the file when it does not fit
    return cfg.model_copy(update={"model": model_cfg})


@app.command()
@exits_cleanly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for sites, store and model.")] = Path("fedeye-demo"),
    sites: Annotated[int, typer.Option(min=2, max=100, help="Number of synthetic hospitals.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, max=100_000, help="Federated rounds.")] = 5,
    backbone_weights: BackboneOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run and its per-site results as JSON (progress on stderr).")
    ] = False,
) -> None:
    """Synthesize hospitals, federate a small ViT across them, report per site."""
    from fedeye.cli.demo import demo_config, prepare_demo_sites

    out = out.resolve()
    os.environ.setdefault("FEDEYE_HOME", str(out))  # the simulated sites' audit logs go under DIR
    site_root = prepare_demo_sites(out, sites=sites)
    (err_console if as_json else console).print(f"[bold]FedEye demo[/]: {sites} synthetic hospitals in {site_root}")
    cfg = _with_backbone(demo_config(out, site_root=site_root, rounds=rounds), backbone_weights)
    result = _simulate_and_report(cfg, as_json=as_json)
    if as_json:
        return
    console.print(
        f"\nglobal model: [bold]{result.model_path}[/]\nrun store:    [bold]{result.store_url}[/]  (run {result.run_id})"
    )
    console.print(f"audit logs:   [bold]{fedeye_home() / 'audit'}[/]  (what each site sent, one JSON line per message)")
    console.print("\nnext, try:")
    for line in (
        f"fedeye runs show {result.run_id} --db {out / 'fedeye.db'}",
        f"fedeye report {result.run_id} --db {out / 'fedeye.db'} --out {out / 'report'}",
        f"fedeye evaluate --model {result.model_path} --data {site_root / 'site-1'}",
        f"fedeye site check {site_root / 'site-1'}",
        f"fedeye sites synth {out / 'more-sites'} --sites 6 --seed 7",
    ):
        console.print(f"  {line}")


def _simulate_and_report(cfg: RunConfig, *, as_json: bool = False) -> SimulationResult:
    from fedeye.cli.progress import RichProgress
    from fedeye.compose.simulation import simulate as run_sim
    from fedeye.errors import FederationError
    from fedeye.server.federation import open_store
    from fedeye.server.preflight import simulation_sites

    sites = simulation_sites(cfg)  # every site checked before the display and Flower start
    with RichProgress(err_console if as_json else console, rounds=cfg.training.rounds) as progress:
        result = run_sim(cfg, progress=progress, sites=sites)
    with open_store(cfg) as store:
        detail = store.get_run(result.run_id)
    if detail.run.status != "finished":  # the ServerApp raises when a run fails; this is the store's word on it
        raise FederationError(
            f"run {result.run_id} ended {detail.run.status}: {detail.run.error or 'no reason recorded'}"
        )
    tested = sorted((m for m in detail.site_metrics if m.phase == "test"), key=lambda m: m.site)
    if as_json:
        print_json(
            {
                "run_id": result.run_id,
                "store": result.store_url,
                "model": result.model_path,
                "sites": [{"site": m.site, "num-examples": m.num_examples, **m.metrics} for m in tested],
            }
        )
        return result
    console.print()
    _print_site_table(tested, split=cfg.data.final_split)
    return result


def _print_site_table(tested: list[SiteMetricRecord], *, split: str) -> None:
    rows: list[list[Cell]] = [
        [m.site, *(_f(m.metrics.get(k)) for k in SITE_METRICS), str(m.num_examples)] for m in tested
    ]
    if tested:
        mean = [_f(_mean([m.metrics.get(k) for m in tested])) for k in SITE_METRICS]
        rows.append([Text("federated mean", style="bold"), *mean, str(sum(m.num_examples for m in tested))])
    columns = [
        Column("site"),
        *(Column(h, justify="right") for h in ("AUC", "accuracy", "sensitivity", "specificity", "images")),
    ]
    print_table(columns, rows, title=f"final global model on each site's {split} split")


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _f(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


@app.command()
@exits_cleanly
def evaluate(
    model: Annotated[Path, typer.Option(help="A model file saved by FedEye (global-model.pt).")],
    data: Annotated[Path, typer.Option(help="A site folder.")],
    split: Annotated[
        str, typer.Option(help="train, val, test, or all (every image: a site the federation never saw).")
    ] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Also draw the reliability diagram (before and after the model's stored calibration) "
            "into this file (.png, .svg or .pdf)."
        ),
    ] = None,
) -> None:
    """Evaluate a saved model on any site folder."""
    from fedeye.client.evaluate import evaluate_model_on_site

    if plot is not None:
        _check_plot_path(plot)
    report = evaluate_model_on_site(model, data, split=split)
    if plot is not None:
        _write_reliability_plot(report, plot, quiet=as_json)
    if as_json:
        print_json(report)
        return
    if report["note"]:
        console.print(f"[yellow]note[/]: {report['note']}")
    console.print(_operating_point_line(report["operating_point"]))
    m = report["metrics"]
    rows: list[list[Cell]] = []
    for key in (
        "auc",
        "sensitivity",
        "specificity",
        "balanced-accuracy",
        "ppv",
        "npv",
        "accuracy",
        "ece",
        "ece-calibrated",
    ):
        if key in m:
            ci = f"{_f(m[key + '-ci-low'])} - {_f(m[key + '-ci-high'])}" if key + "-ci-low" in m else ""
            rows.append([key, _f(m[key]), ci])
    title = (
        f"{report['model']} on {report['site']} ({report['split']}: {report['num_examples']} images, "
        f"{report['num_positive']} positive)"
    )
    print_table(
        [Column("metric"), Column("value", justify="right"), Column("95% CI", justify="right")], rows, title=title
    )
    if report["experts"]:
        mix = [[name, f"{weight:.3f}"] for name, weight in sorted(report["experts"].items(), key=lambda kv: -kv[1])]
        print_table(
            [Column("expert (site)"), Column("mean weight", justify="right")],
            mix,
            title="Which experts the router mixes for these images (mean weight)",
        )


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_plot_path(plot: Path) -> None:
    if plot.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot: got {plot.name!r}; name a {', '.join(PLOT_SUFFIXES)} file, e.g. reliability.png")
    check_output_file(plot, option="--plot", example="reliability.png")


def _write_reliability_plot(report: dict[str, Any], plot: Path, *, quiet: bool) -> None:
    """Draw ``report``'s reliability diagram into ``plot`` (a note instead for a multiclass task)."""
    out = err_console if quiet else console
    if report["reliability"] is None:
        out.print("[yellow]note[/]: no reliability diagram: it is drawn for binary tasks only")
        return
    from fedeye.fairness.reliability import ReliabilityDiagram
    from fedeye.fairness.reliability_plot import reliability_figure  # matplotlib loads only when asked

    diagram = ReliabilityDiagram.from_json(report["reliability"])
    figure = reliability_figure({f"{report['site']} ({report['split']})": diagram})
    try:
        plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(plot, bbox_inches="tight")
    except OSError as err:
        raise ConfigError(f"--plot: cannot write {plot}: {err.strerror or err}; choose another path") from err
    out.print(f"reliability diagram written to {plot}")


def _operating_point_line(point: dict[str, object]) -> str:
    if not point.get("stored"):
        return "operating point: p >= 0.5 (this model file carries none; `fedeye calibrate` sets one)"
    fitted = [int(n) for n in point.get("fitted_on") or [0, 0]]  # type: ignore[attr-defined]
    basis = f"{fitted[0]} positive and {fitted[1]} negative images" if sum(fitted) else "unlabelled images"
    threshold, calibration = float(point["threshold"]), Calibration.from_metadata(point)  # type: ignore[arg-type]
    return (
        f"operating point: p >= {threshold:.3f} after {calibration.describe()} "
        f"({point['target']}, set by {point['source']} on {basis})"
    )


def main() -> None:
    """Console-script entry point."""
    app()
