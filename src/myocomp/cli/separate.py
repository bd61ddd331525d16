"""`myocomp separate`: multi-echo gradient-echo images -> water, fat, PDFF, B0 field map, R2*."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app
from myocomp.errors import ConfigError

HELP = {
    "magnitude": "Magnitude NIfTI of one echo; repeat once per echo, in echo order.",
    "phase": "Phase NIfTI of one echo (same order as --magnitude).",
    "dicom": "DICOM folder of one multi-echo series: GE magnitude/phase/real/imaginary (tag "
    "0043,102F) or magnitude + phase series (ImageType M/P); echo times and field from headers.",
    "echoes": "Folder of echoes: BIDS-named NIfTI (echo-<n>_part-mag/phase.nii.gz with JSON "
    "sidecars, as written by 'myocomp phantom --echoes') or a DICOM folder.",
    "te_ms": "Echo times in ms, comma-separated (needed when no sidecar/header has EchoTime).",
    "field_t": "Main field in T (needed when no sidecar/header has MagneticFieldStrength).",
    "out": "Output folder: water, fat, pdff, fieldmap_hz (+ r2star with >= 3 echoes) .nii.gz and "
    "separation.json (provenance).",
    "phase_units": "Phase units: auto (detected from the value range), rad, deg, mrad (GE), "
    "uint12 (0..4095), int12 (-4096..4095).",
    "precession": "Sign convention of the phase: as_stored (ISMRM toolbox convention, "
    "PrecessionIsClockwise=1), conjugate, or auto (the multi-peak fit decides when "
    "decisive, else the body-surface layer (the reading in which it is subcutaneous fat), else a "
    "weaker multi-peak fit; refused when nothing decides; with 2 echoes whose two readings give "
    "the same PDFF, as_stored). The evidence and any warning go to separation.json and stderr.",
    "field_range": "Half-width (Hz) of the field-map search (multi_echo; default 600).",
    "method": "multi_echo (default: field map, water, fat and R2* fitted to all echoes) or "
    "phase_referenced (water and fat from one echo's phase against a grown smooth background "
    "phase; for echo sets refused by multi_echo because fat barely changes phase between their "
    "echoes; no R2*, PDFF biased by a few hundredths in muscle; see README).",
    "register_echoes": "Translate echoes 2..N onto echo 1 by their measured in-plane "
    "displacement (sub-voxel Fourier shift) before separating: for echoes acquired as separate "
    "series (motion between them); wrong for a bipolar readout (multi_echo only).",
    "mask_fraction": "Signal mask: root-sum-of-squares over echoes above this fraction of its "
    "99th percentile; PDFF is NaN outside.",
}


def parse_te_ms(text: str | None) -> tuple[float, ...] | None:
    """'1.2,2.2' -> (0.0012, 0.0022) s."""
    if text is None:
        return None
    try:
        return tuple(float(v) / 1000.0 for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--te-ms {text!r} is not numbers separated by commas (ms)") from None


def load_echo_input(magnitude, phase, dicom, echoes, phase_units):
    """The one echo input given (pairs, --dicom or --echoes) as EchoData."""
    from myocomp.imaging.echoes import load_echo_folder, load_echo_pairs, read_dicom_echoes

    given = [bool(magnitude or phase), dicom is not None, echoes is not None]
    if sum(given) != 1:
        raise ConfigError("give exactly one input: --magnitude/--phase pairs, --dicom or --echoes")
    if dicom is not None:
        return read_dicom_echoes(dicom, phase_units=phase_units)
    if echoes is not None:
        return load_echo_folder(echoes, phase_units=phase_units)
    return load_echo_pairs(magnitude, phase, phase_units=phase_units)


def separation_options(method, field_range_hz, register_echoes, mask_fraction) -> dict:
    """The separation options the command line gives, checked (field range and registration are
    options of the multi-echo method only)."""
    from myocomp.imaging.echoes import METHODS

    if method not in METHODS:
        raise ConfigError(f"--method must be {' or '.join(METHODS)}, got {method!r}")
    if not (0 < mask_fraction < 1):
        raise ConfigError("--mask-fraction must lie in (0, 1)")
    options = {"mask_fraction": mask_fraction}
    given = {"--field-range-hz": ("field_range_hz", field_range_hz),
             "--register-echoes": ("register_echoes", True if register_echoes else None)}
    for flag, (key, value) in given.items():
        if value is not None and method != "multi_echo":
            raise ConfigError(f"{flag} applies to --method multi_echo only")
        if value is not None:
            options[key] = value
    if not (0 < options.get("field_range_hz", 600.0) <= 5000):
        raise ConfigError("--field-range-hz must lie in (0, 5000]")
    return options


def write_separation(result, affine, out: Path, protect=()) -> list[Path]:
    """Write the maps (float32, input grid) and separation.json, all or none, never over
    an input (``protect``)."""
    import numpy as np

    from myocomp.io import save_nifti, staged_outputs, write_json

    maps = {"water": np.abs(result.water), "fat": np.abs(result.fat), "pdff": result.pdff,
            "fieldmap_hz": result.fieldmap_hz}
    if result.r2star is not None:
        maps["r2star"] = result.r2star
    with staged_outputs(protect=protect) as stage:
        folder = stage.folder(out)
        for k, v in maps.items():
            save_nifti(v.astype(np.float32), affine, folder / f"{k}.nii.gz")
        write_json(result.params, folder / "separation.json")
    return [out / f"{k}.nii.gz" for k in maps] + [out / "separation.json"]


@app.command()
def separate(
    out: Path = typer.Option(..., "--out", help=HELP["out"]),
    magnitude: list[Path] = typer.Option(None, "--magnitude", help=HELP["magnitude"]),
    phase: list[Path] = typer.Option(None, "--phase", help=HELP["phase"]),
    dicom: Path | None = typer.Option(None, "--dicom", help=HELP["dicom"]),
    echoes: Path | None = typer.Option(None, "--echoes", help=HELP["echoes"]),
    te_ms: str | None = typer.Option(None, "--te-ms", help=HELP["te_ms"]),
    field_t: float | None = typer.Option(None, "--field-t", help=HELP["field_t"]),
    phase_units: str = typer.Option("auto", "--phase-units", help=HELP["phase_units"]),
    precession: str = typer.Option("auto", "--precession", help=HELP["precession"]),
    method: str = typer.Option("multi_echo", "--method", help=HELP["method"]),
    field_range_hz: float | None = typer.Option(None, "--field-range-hz",
                                                help=HELP["field_range"]),
    register_echoes: bool = typer.Option(False, "--register-echoes",
                                         help=HELP["register_echoes"]),
    mask_fraction: float = typer.Option(0.05, "--mask-fraction", help=HELP["mask_fraction"]),
) -> None:
    """Fat-water separation of multi-echo data: water, fat, PDFF (0-1), B0 (Hz), R2* (1/s)."""
    from myocomp.imaging.echoes import separate_echo_data
    from myocomp.io import check_output_paths

    options = separation_options(method, field_range_hz, register_echoes, mask_fraction)

    inputs = {"--dicom": dicom, "--echoes": echoes}
    inputs |= {f"--magnitude {i + 1}": p for i, p in enumerate(magnitude or [])}
    inputs |= {f"--phase {i + 1}": p for i, p in enumerate(phase or [])}
    check_output_paths({"--out": out}, inputs, folders=["--out"])
    data = load_echo_input(magnitude, phase, dicom, echoes, phase_units)
    result = separate_echo_data(data, te_s=parse_te_ms(te_ms), field_t=field_t,
                                precession=precession, method=method, **options)
    paths = write_separation(result, data.affine, out, protect=[p for p in inputs.values() if p])
    p = result.params
    for text in p["warnings"]:
        typer.echo(f"warning: {text}", err=True)
    typer.echo(f"{len(p['echo_times_s'])} echoes, {p['field_t']:g} T, {method}, precession "
               f"{p['precession']['used']}: wrote {', '.join(x.name for x in paths)} to {out}")
