"""The ``fedeye`` command line: thin commands over the domain functions."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from fedeye.cli._common import console, exits_cleanly
from fedeye.client.audit import fedeye_home
from fedeye.cli.adapt import adapt_command, calibrate_command
from fedeye.cli.benchmark import benchmark_app
from fedeye.cli.dashboard import dashboard_command
from fedeye.cli.operate import coordinator_start, run_app, site_start
from fedeye.cli.provision import coordinator_app, site_init
from fedeye.cli.report import report_command
from fedeye.cli.runs import runs_app

if TYPE_CHECKING:
    from fedeye.config import RunConfig
    from fedeye.compose.simulation import SimulationResult
    from fedeye.server.store import RunDetail

app = typer.Typer(
    name="fedeye",
    help="FedEye: federated, privacy-preserving learning for ophthalmology on Flower.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(runs_app, name="runs")
app.command("report")(report_command)
app.command("dashboard")(dashboard_command)
site_app = typer.Typer(help="Work with one site's data.", no_args_is_help=True)
sites_app = typer.Typer(help="Work with several sites (synthetic hospitals).", no_args_is_help=True)
app.add_typer(site_app, name="site")
site_app.command("init")(site_init)
site_app.command("start")(site_start)
coordinator_app.command("start")(coordinator_start)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(run_app, name="run")
app.add_typer(sites_app, name="sites")
app.add_typer(benchmark_app, name="benchmark")
app.command("calibrate")(calibrate_command)
app.command("adapt")(adapt_command)

Modality = Literal["fundus", "oct"]
BackboneOption = Annotated[
    Path | None,
    typer.Option("--backbone-weights", help="Local timm- or RETFound-format checkpoint to start the backbone from."),
]


@site_app.command("check")
@exits_cleanly
def site_check(site_dir: Annotated[Path, typer.Argument(help="The site folder (with manifest.csv).")]) -> None:
    """Validate a site folder and print a summary; exit 1 listing every problem."""
    from fedeye.sites.check import check_site, render_report

    report = check_site(site_dir)
    render_report(report, console)
    if not report.ok:
        raise typer.Exit(1)


@sites_app.command("synth")
@exits_cleanly
def sites_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the site folders into.")],
    sites: Annotated[int, typer.Option(min=1, help="Number of hospitals.")] = 4,
    images_per_site: Annotated[int, typer.Option(min=10, help="Images per hospital.")] = 200,
    modality: Annotated[str, typer.Option(help="fundus or oct.")] = "fundus",
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = 128,
    overwrite: Annotated[bool, typer.Option(help="Replace existing site folders.")] = False,
) -> None:
    """Write synthetic hospital sites (see fedeye/sites/README.md for the data sheet)."""
    from fedeye.sites.synth import synthesize_sites

    if modality not in ("fundus", "oct"):
        raise typer.BadParameter("must be 'fundus' or 'oct'", param_hint="--modality")
    paths = synthesize_sites(
        out, sites=sites, images_per_site=images_per_site, modality=modality,  # type: ignore[arg-type]
        seed=seed, size=size, overwrite=overwrite,
    )
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"check one with: [bold]fedeye site check {paths[0]}[/]")


@app.command()
@exits_cleanly
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run file (TOML).")],
    db: Annotated[str | None, typer.Option(help="Run store URL or SQLite path (default: FEDEYE_DB or output.dir).")] = None,
    backbone_weights: BackboneOption = None,
) -> None:
    """Run any configured experiment in Flower's Simulation Engine."""
    from fedeye.config import load_run_config

    cfg = load_run_config(config)
    if db:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"db": db})})
    _simulate_and_report(_with_backbone(cfg, backbone_weights))


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
    sites: Annotated[int, typer.Option(min=2, help="Number of synthetic hospitals.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 5,
    backbone_weights: BackboneOption = None,
) -> None:
    """Synthesize hospitals, federate a small ViT across them, report per site."""
    from fedeye.cli.demo import demo_config, prepare_demo_sites

    out = out.resolve()
    os.environ.setdefault("FEDEYE_HOME", str(out))  # the simulated sites' audit logs go under DIR
    site_root = prepare_demo_sites(out, sites=sites)
    console.print(f"[bold]FedEye demo[/]: {sites} synthetic hospitals in {site_root}")
    cfg = _with_backbone(demo_config(out, site_root=site_root, rounds=rounds), backbone_weights)
    result = _simulate_and_report(cfg)
    console.print(f"\nglobal model: [bold]{result.model_path}[/]\nrun store:    [bold]{result.store_url}[/]  (run {result.run_id})")
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


def _simulate_and_report(cfg: RunConfig) -> SimulationResult:
    from fedeye.cli.progress import RichProgress
    from fedeye.server.federation import open_store
    from fedeye.compose.simulation import simulate as run_sim
    from fedeye.server.preflight import simulation_sites

    sites = simulation_sites(cfg)  # every site checked before the display and Flower start
    with RichProgress(console, rounds=cfg.training.rounds) as progress:
        result = run_sim(cfg, progress=progress, sites=sites)
    with open_store(cfg) as store:
        detail = store.get_run(result.run_id)
    console.print()
    _print_site_table(detail, split=cfg.data.final_split)
    return result


def _print_site_table(detail: RunDetail, *, split: str) -> None:
    rows = [m for m in detail.site_metrics if m.phase == "test"]
    table = Table(title=f"final global model on each site's {split} split", header_style="bold")
    for name in ("site", "AUC", "accuracy", "sensitivity", "specificity", "images"):
        table.add_column(name, justify="left" if name == "site" else "right", no_wrap=name == "site")
    for m in sorted(rows, key=lambda r: r.site):
        table.add_row(m.site, *(_f(m.metrics.get(k)) for k in ("auc", "accuracy", "sensitivity", "specificity")), str(m.num_examples))
    if rows:
        mean = {k: _mean([r.metrics.get(k) for r in rows]) for k in ("auc", "accuracy", "sensitivity", "specificity")}
        table.add_section()
        table.add_row("[bold]federated mean", *(_f(mean[k]) for k in mean), str(sum(r.num_examples for r in rows)))
    console.print(table)


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
    split: Annotated[str, typer.Option(help="train, val, test, or all (every image: a site the federation never saw).")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a saved model on any site folder."""
    from fedeye.client.evaluate import evaluate_model_on_site

    report = evaluate_model_on_site(model, data, split=split)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if report["note"]:
        console.print(f"[yellow]note[/]: {report['note']}")
    console.print(_operating_point_line(report["operating_point"]))
    table = Table(title=f"{report['model']} on {report['site']} ({report['split']}: {report['num_examples']} images, "
                  f"{report['num_positive']} positive)", header_style="bold")
    for name in ("metric", "value", "95% CI"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    m = report["metrics"]
    for key in ("auc", "sensitivity", "specificity", "balanced-accuracy", "ppv", "npv", "accuracy", "ece", "ece-calibrated"):
        if key in m:
            ci = f"{_f(m[key + '-ci-low'])} - {_f(m[key + '-ci-high'])}" if key + "-ci-low" in m else ""
            table.add_row(key, _f(m[key]), ci)
    console.print(table)
    if report["experts"]:
        mix = Table(title="Which experts the router mixes for these images (mean weight)", header_style="bold")
        mix.add_column("expert (site)")
        mix.add_column("mean weight", justify="right")
        for name, weight in sorted(report["experts"].items(), key=lambda kv: -kv[1]):
            mix.add_row(name, f"{weight:.3f}")
        console.print(mix)


def _operating_point_line(point: dict[str, object]) -> str:
    if not point.get("stored"):
        return "operating point: p >= 0.5 (this model file carries none; `fedeye calibrate` sets one)"
    fitted = [int(n) for n in point.get("fitted_on") or [0, 0]]  # type: ignore[attr-defined]
    basis = f"{fitted[0]} positive and {fitted[1]} negative images" if sum(fitted) else "unlabelled images"
    return (f"operating point: p >= {float(point['threshold']):.3f} after temperature {float(point['temperature']):.2f} "  # type: ignore[arg-type]
            f"({point['target']}, set by {point['source']} on {basis})")


def main() -> None:
    """Console-script entry point."""
    app()
