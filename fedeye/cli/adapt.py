"""``fedeye calibrate`` and ``fedeye adapt``: fit a model's operating point to one hospital."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from fedeye.cli._common import check_output_file, console, exits_cleanly, finite
from fedeye.errors import ConfigError
from fedeye.fairness.operating_point import Calibration, Target

ModelOption = Annotated[Path, typer.Option("--model", help="A model file saved by FedEye.")]
DataOption = Annotated[Path, typer.Option("--data", help="The hospital's site folder.")]
OutOption = Annotated[Path, typer.Option("--out", help="Where to write the new model file (the input is kept).")]
SplitOption = Annotated[str, typer.Option("--split", help="train, val, test or all (default: every image).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@exits_cleanly
def calibrate_command(
    model: ModelOption,
    data: DataOption,
    out: OutOption,
    split: SplitOption = "all",
    operating_point: Annotated[
        str | None,
        typer.Option(
            "--operating-point", help='"youden" or a target sensitivity in (0, 1); default: the model\'s own target.'
        ),
    ] = None,
    max_labels: Annotated[
        int | None, typer.Option("--max-labels", min=2, help="Use at most this many labelled images.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-fit threshold and temperature from a small labelled local set."""
    from fedeye.client.calibrate import calibrate_file

    check_output_file(out, option="--out", example="calibrated.pt", inputs=[model, data])
    result = calibrate_file(model, data, out, split=split, target=_target(operating_point), max_labels=max_labels)
    _show(result, as_json, f"calibrated on {result['images']} labelled images ({result['positives']} positive)")


@exits_cleanly
def adapt_command(
    model: ModelOption,
    data: DataOption,
    out: OutOption,
    split: SplitOption = "all",
    tent_steps: Annotated[
        int,
        typer.Option(
            "--tent-steps", min=0, help="Entropy-minimisation steps on LayerNorms and prompts (0: threshold only)."
        ),
    ] = 0,
    prevalence_strength: Annotated[
        float | None,
        typer.Option(
            "--prevalence-strength",
            callback=finite(0.0),
            help="Weight, in images, of the federation's validation prevalence as the prior of the new site's "
            "(0: none; default: fedeye.client.adapt.PREVALENCE_STRENGTH).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Adapt a model to a new hospital from its unlabelled images (see fedeye/client/adapt.py)."""
    from fedeye.client.adapt import AdaptSettings
    from fedeye.client.calibrate import adapt_file

    check_output_file(out, option="--out", example="adapted.pt", inputs=[model, data])
    settings = AdaptSettings(tent_steps=tent_steps)
    if prevalence_strength is not None:
        settings = replace(settings, prevalence_strength=prevalence_strength)
    result = adapt_file(model, data, out, split=split, settings=settings)
    _show(result, as_json, f"adapted on {result['num_images']} unlabelled images: {result['reason']}")


def _target(raw: str | None) -> Target | None:
    if raw is None:
        return None
    if raw == "youden":
        return "youden"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise ConfigError(f'--operating-point: got {raw!r}; use "youden" or a target sensitivity in (0, 1), e.g. 0.85')
    return value


def _show(result: dict[str, Any], as_json: bool, headline: str) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    point = result["operating_point"]
    console.print(headline)
    console.print(
        f"operating point: p >= {point['threshold']:.3f} after {Calibration.from_metadata(point).describe()} "
        f"({point['target']}; sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f} "
        f"{'on these images' if point['source'] == 'calibrate' else 'expected under the fitted mixture'})"
    )
    console.print(f"wrote [bold]{result['out']}[/]; check it with: fedeye evaluate --model {result['out']} --data DIR")
