"""``fedeye pretrain``: a ViT backbone by masked autoencoding on unlabelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedeye.cli._common import check_output_file, console, exits_cleanly, finite
from fedeye.models.config import ArchName, DeviceChoice


@exits_cleanly
def pretrain_command(
    data: Annotated[
        Path, typer.Option("--data", help="A site folder (any FedEye format; no labels used) or image folder.")
    ],
    more: Annotated[
        list[Path] | None, typer.Argument(help="More folders: `--data DIR [DIR ...]`.", show_default=False)
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Checkpoint to write (timm format: model.backbone_weights).")
    ] = Path("backbone.pt"),
    arch: Annotated[
        ArchName, typer.Option(help="Backbone size (model.arch of the runs that will use it).")
    ] = "vit-tiny-cpu",
    img_size: Annotated[int | None, typer.Option(help="Image side in pixels; default: the arch's.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the images.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 64,
    lr: Annotated[
        float,
        typer.Option(callback=finite(0.0, above=True), help="Base learning rate (scaled by batch / 256, as MAE)."),
    ] = 1.5e-4,
    mask_ratio: Annotated[
        float, typer.Option(callback=finite(0.05, 0.95), help="Share of patches hidden (MAE: 0.75; 0.05-0.95).")
    ] = 0.75,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, masking and order.")] = 0,
    device: Annotated[DeviceChoice, typer.Option(help="auto: CUDA (mixed precision) if present, else CPU.")] = "auto",
) -> None:
    """Pretrain a backbone by masked autoencoding (MAE, as RETFound) on unlabelled images."""
    from fedeye.models.pretrain import PretrainSettings, pretrain_mae, save_pretrained
    from fedeye.sites.unlabelled import load_unlabelled

    settings = PretrainSettings(
        arch=arch,
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        mask_ratio=mask_ratio,
        seed=seed,
        device=device,
    )
    check_output_file(out, option="--out", example="backbone.pt", inputs=[data, *(more or [])])
    size = int(settings.model_config().img_size or 0)
    images, records = load_unlabelled([data, *(more or [])], size=size)
    console.print(f"{len(images)} images from {len(records)} folder(s) at {size} px; {arch}, {epochs} epochs")
    result = pretrain_mae(images, settings, log=console.print)
    save_pretrained(out, result, settings, [r.as_dict() for r in records])
    console.print(f"wrote {out} ({result.seconds:.0f} s on {result.device}); use it as model.backbone_weights")
