"""`myocomp segment` and `myocomp models list|fetch`."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app
from myocomp.errors import ConfigError, GeometryError

models_app = typer.Typer(
    help="Segmentation models: list the registry, fetch weights into the cache.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _check_segment_output(out: Path, images: list[Path], model: str) -> None:
    """Refuse an --out that is not NIfTI, or that would overwrite an image or the model folder."""
    from myocomp.io import check_output_paths

    if not out.name.endswith((".nii", ".nii.gz")):
        raise ConfigError("--out must end in .nii or .nii.gz", source=out)
    inputs = {f"--image {i + 1}": p for i, p in enumerate(images)}
    if Path(model).exists():
        inputs["--model"] = Path(model)
    check_output_paths({"--out": out}, inputs)


@app.command("segment")
def segment_command(
    model: str = typer.Option(..., "--model", help="nnU-Net v2 results folder or registry name."),
    image: list[Path] = typer.Option(
        ...,
        "--image",
        help="Input NIfTI, once per model channel in dataset.json channel order "
        "(e.g. water then fat). A single-channel model given two images gets their sum (W+F).",
    ),
    out: Path = typer.Option(..., "--out", help="Output label map (.nii.gz), on the input's grid."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    folds: str | None = typer.Option(
        None, "--folds", help="Folds to ensemble, e.g. 0,1 (default all)."
    ),
    profile: str = typer.Option(
        "auto",
        "--profile",
        help="Label profile: auto (from dataset.json), a built-in name or a file.",
    ),
    orientation: str | None = typer.Option(
        None,
        "--orientation",
        help="Orientation the model expects (e.g. RAS, LPS); default registry/RAS.",
    ),
    mirroring: bool = typer.Option(
        True,
        "--mirroring/--no-mirroring",
        help="Test-time mirroring where the checkpoint allows it.",
    ),
) -> None:
    """Segment an image with an nnU-Net v2 model; the label map overlays the input file."""
    import numpy as np

    from myocomp.imaging.labelmap import labelmap_from_array
    from myocomp.imaging.labels import get_profile, profile_from_dataset_json, save_labels
    from myocomp.io import check_output_paths, staged_outputs
    from myocomp.segment.models import resolve_model
    from myocomp.segment.nnunet import image_channels, load_model_spec, segment_arrays

    _check_segment_output(out, image, model)
    model_dir = resolve_model(model)
    spec = load_model_spec(model_dir, orientation)
    check_output_paths({"--out": out}, {"model folder": model_dir})
    imgs = _load_images(image)
    ref = imgs[0]
    arrays, sources = image_channels([img.dataobj for img in imgs], spec.channel_names, model)
    prof = profile_from_dataset_json(spec.dataset_json) if profile == "auto" else get_profile(profile)
    labels = segment_arrays(
        arrays,
        ref.affine,
        spec.path,
        device,
        folds,
        mirroring=mirroring,
        input_axcodes=spec.input_axcodes,
    )
    labelmap_from_array(labels, ref.affine, prof, source=str(out))  # ids known, muscles present
    with staged_outputs(protect=[*image, model_dir]) as stage:
        save_labels(labels, ref.affine, stage.file(out))
    for i, (name, used) in enumerate(zip(spec.channel_names, sources, strict=True)):
        typer.echo(f"channel {i} ({name}) <- {' + '.join(str(image[k]) for k in used)}")
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    summary = ", ".join(
        f"{prof.ids.get(int(i), i)}={int(c)}" for i, c in zip(ids, counts, strict=True)
    )
    typer.echo(f"wrote {out} ({summary} voxels); profile for quantify: {spec.dataset_json}")


def _load_images(paths: list[Path]) -> list:
    """The --image NIfTIs (nibabel images), refused unless all are on the first one's grid."""
    from myocomp.imaging.dixon import load_nifti, same_grid

    imgs = [load_nifti(p, role=f"image {i}") for i, p in enumerate(paths)]
    ref = imgs[0]
    for path, img in zip(paths[1:], imgs[1:], strict=True):
        if img.shape != ref.shape or not same_grid(img.affine, ref.affine, shape=ref.shape):
            raise GeometryError(f"not on the grid of {paths[0]} (shape/affine differ)", source=path)
    return imgs


@models_app.command("list")
def models_list() -> None:
    """Supported models: name, installed?, licence, source."""
    from rich.console import Console
    from rich.table import Table

    from myocomp.segment.models import cache_dir, list_models

    table = Table(title=f"models (cache: {cache_dir() / 'models'})")
    for col in ("name", "installed", "licence", "source"):
        table.add_column(col, overflow="fold")
    for row in list_models():
        table.add_row(row["name"], row["installed"] or "no", row["licence"], row["source"])
    Console(width=160).print(table)


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="Registry name (see `myocomp models list`)."),
    to: Path | None = typer.Option(None, "--to", help="Install folder (default: the cache)."),
    from_file: Path | None = typer.Option(
        None, "--from-file", help="Install from a local copy of the archive (no network)."
    ),
    url: str | None = typer.Option(None, "--url", help="Download from this URL (mirror) instead."),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected SHA-256 (e.g. a mirror's)."),
    force: bool = typer.Option(False, "--force", help="Reinstall even if installed."),
) -> None:
    """Download (or unpack) a model's published archive, verify it, install it; print its licence."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from myocomp.segment.models import fetch_model

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a pipe or log gets no bar and no stray blank line
    ) as bar:
        task = bar.add_task(f"fetching {name}", total=None)

        def report(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        result = fetch_model(
            name, to=to, from_file=from_file, url=url, sha256=sha256, force=force, progress=report
        )
    if result.already_installed:
        typer.echo(f"already installed (use --force to reinstall)\n{result.message()}")
    else:
        typer.echo(f"installed\n{result.message()}")
