"""`myocomp phantom`: write a synthetic lumbar Dixon scan with exact ground-truth metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app
from myocomp.errors import ConfigError

SUMMARY_METRICS = ("volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "lmm")

HELP = {
    "out": "Output folder (created if missing); water.nii.gz, fat.nii.gz, labels.nii.gz, "
    "in_phase.nii.gz, opposed_phase.nii.gz and truth.json are written into it.",
    "seed": "Seed of every random choice (anatomy, bias field, noise, artefacts); the same seed "
    "and options give identical files.",
    "voxel_size": "Output voxel size in mm along right, anterior, superior: 'dx,dy,dz', or one "
    "number for isotropic voxels.",
    "snr": "Signal-to-noise ratio = mean noise-free muscle water signal / noise sigma (complex "
    "Gaussian noise, magnitude images: Rician). 0 or inf: no noise.",
    "infiltration": "Mean diffuse fat fraction of the back muscles (0-0.4; psoas 0.8x); it "
    "varies smoothly in space by about +-50 %.",
    "intermat": "Approximate fraction (0-0.4) of each muscle's volume in intramuscular fat "
    "streaks (FF >= 0.5); the exact value is in truth.json.",
    "bias": "Amplitude (0-1) of the smooth multiplicative coil bias field: signal x "
    "[1 - bias, 1 + bias].",
    "orientation": "Axis codes of the stored arrays (e.g. RAS, LPS, SAR, PIL); data and affine "
    "are flipped/permuted together, so world geometry is unchanged.",
    "swap_region": "Artefact: exchange water and fat inside a 20 mm sphere in one autochthon "
    "muscle (truth is unaffected).",
    "nan_voxels": "Artefact: number of voxels set to NaN in every image (random positions).",
    "slices": "Number of axial slices, centred on the modelled 160 mm lumbar trunk (default: "
    "160 mm / dz); slices beyond its ends repeat the end cross-sections.",
    "supersample": "Fine-model subvoxels per voxel edge, for partial volume and the truth "
    "(1: none).",
    "bmi": "Body-mass index (kg/m^2): sets the fat thicknesses and the truth's lmm.",
    "profile": "Label profile whose ids labels.nii.gz uses (default mrsegmentator: autochthon "
    "31/32, iliopsoas 33/34, spine 25), or a profile JSON.",
    "fat_threshold": "Fat fraction tau used for the truth's lean volume and InterMAT.",
    "band_mm": "Perimuscular band width (mm) used for the truth's InterMAT (0: none).",
    "echoes": "Multi-echo mode: comma-separated echo times in ms (e.g. 1.2,2.2,3.2). Writes "
    "echo-<n>_part-mag/phase.nii.gz (phase in radians) with BIDS JSON sidecars, labels and the "
    "truth (truth_water/fat/pdff/fieldmap_hz/r2star.nii.gz, truth.json) instead of water/fat.",
    "field": "Multi-echo mode: main field strength in T (sets the fat chemical shifts).",
    "b0_range": "Multi-echo mode: the smooth B0 off-resonance spans [-HZ, +HZ] over the field of view.",
    "r2star": "Multi-echo mode: mean R2* in 1/s (varies smoothly by +-20 %; 0: no decay).",
    "precession": "Multi-echo mode: as_stored (the fat-water model's sign of the phase) or "
    "conjugate (the other vendor convention).",
}


def parse_echo_times(text: str) -> tuple[float, ...]:
    """'1.2,2.2,3.2' -> (1.2, 2.2, 3.2) ms."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--echoes {text!r} is not numbers separated by commas (ms)") from None


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """'2,2,4' -> (2.0, 2.0, 4.0); a single number means isotropic voxels."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--voxel-size {text!r} is not numbers separated by commas (e.g. 2,2,4)"
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ConfigError(f"--voxel-size {text!r} needs one or three numbers (mm)")
    return values  # type: ignore[return-value]


@app.command()
def phantom(
    out: Path = typer.Option(..., "--out", help=HELP["out"]),
    seed: int = typer.Option(0, "--seed", help=HELP["seed"]),
    voxel_size: str = typer.Option("2,2,4", "--voxel-size", help=HELP["voxel_size"]),
    snr: float = typer.Option(40.0, "--snr", help=HELP["snr"]),
    infiltration: float = typer.Option(0.1, "--infiltration", help=HELP["infiltration"]),
    intermat: float = typer.Option(0.05, "--intermat", help=HELP["intermat"]),
    bias: float = typer.Option(0.2, "--bias", help=HELP["bias"]),
    orientation: str = typer.Option("RAS", "--orientation", help=HELP["orientation"]),
    swap_region: bool = typer.Option(False, "--swap-region", help=HELP["swap_region"]),
    nan_voxels: int = typer.Option(0, "--nan-voxels", help=HELP["nan_voxels"]),
    slices: int | None = typer.Option(None, "--slices", help=HELP["slices"]),
    supersample: int = typer.Option(3, "--supersample", help=HELP["supersample"]),
    bmi: float = typer.Option(25.0, "--bmi", help=HELP["bmi"]),
    profile: str = typer.Option("mrsegmentator", "--profile", help=HELP["profile"]),
    fat_threshold: float = typer.Option(0.5, "--fat-threshold", help=HELP["fat_threshold"]),
    band_mm: float = typer.Option(0.0, "--band-mm", help=HELP["band_mm"]),
    echoes: str | None = typer.Option(None, "--echoes", help=HELP["echoes"]),
    field: float = typer.Option(3.0, "--field", help=HELP["field"]),
    b0_range: float = typer.Option(200.0, "--b0-range", help=HELP["b0_range"]),
    r2star: float = typer.Option(40.0, "--r2star", help=HELP["r2star"]),
    precession: str = typer.Option("as_stored", "--precession", help=HELP["precession"]),
) -> None:
    """Write a lumbar-trunk Dixon phantom (water, fat, labels) and its exact ground truth."""
    from myocomp.io import check_output_paths, staged_outputs
    from myocomp.options import check_options
    from myocomp.synth.phantom import make_phantom, write_phantom

    check_options({"--seed": seed, "--snr": snr, "--infiltration": infiltration,
                   "--intermat": intermat, "--bias": bias, "--nan-voxels": nan_voxels,
                   "--slices": slices, "--supersample": supersample, "--bmi": bmi,
                   "--fat-threshold": fat_threshold, "--band-mm": band_mm})
    inputs = {"--profile": Path(profile)} if Path(profile).is_file() else {}
    check_output_paths({"--out": out}, inputs, folders=["--out"])
    options = dict(
        voxel_size_mm=parse_voxel_size(voxel_size),
        n_slices=slices,
        snr=None if snr == 0 else snr,
        infiltration=infiltration,
        intermat=intermat,
        bias=bias,
        orientation=orientation,
        swap_region=swap_region,
        nan_voxels=nan_voxels,
        supersample=supersample,
        bmi=bmi,
        profile=profile,
        fat_threshold=fat_threshold,
        band_mm=band_mm,
    )
    if echoes is not None:
        from myocomp.synth.multiecho import make_multiecho_phantom, write_multiecho_phantom

        if swap_region or nan_voxels:
            raise ConfigError("--swap-region and --nan-voxels are not available with --echoes")
        del options["swap_region"], options["nan_voxels"], options["snr"]
        multi = make_multiecho_phantom(
            seed, te_ms=parse_echo_times(echoes), field_t=field, b0_range_hz=b0_range,
            r2star=r2star, snr=None if snr == 0 else snr, precession=precession, **options)
        paths = write_multiecho_phantom(out, multi)
        typer.echo(f"wrote {len(paths)} files ({len(multi.te_s)} echoes, {field:g} T) to {out}")
        return
    phantom = make_phantom(seed, **options)
    with staged_outputs(protect=inputs.values()) as stage:
        paths = write_phantom(stage.folder(out), phantom=phantom)
    _print_truth(phantom, seed)
    typer.echo(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


def _print_truth(phantom, seed: int) -> None:
    """The truth of the groups back and psoas as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    params = phantom.truth["parameters"]
    shape = "x".join(map(str, params["shape"]))
    table = Table(title=f"phantom seed {seed}: truth ({shape} voxels, {params['orientation']})")
    table.add_column("group")
    for name in SUMMARY_METRICS:
        table.add_column(name, justify="right")
    for group in ("back", "psoas"):
        row = phantom.truth["metrics"].get(group, {})
        cells = ["" if row.get(m) is None else f"{row[m]:.4g}" for m in SUMMARY_METRICS]
        table.add_row(group, *cells)
    Console(width=120).print(table)
