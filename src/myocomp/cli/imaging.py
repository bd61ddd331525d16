"""`myocomp quantify`: Dixon images + a label map -> composition metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app
from myocomp.errors import DataError, InputFileError

TABLE_OUT = (".csv", ".tsv", ".parquet", ".json")


def parse_groups(text: str) -> tuple[str, ...]:
    """'back,psoas' -> ('back', 'psoas'); empty items are an error."""
    groups = tuple(g.strip() for g in text.split(","))
    if not all(groups):
        raise DataError(f"--groups {text!r} has an empty item")
    return groups


def check_table_suffix(path: Path, option: str) -> None:
    if path.suffix.lower() not in TABLE_OUT:
        raise InputFileError(f"{option} must end in one of {', '.join(TABLE_OUT)}", source=path)


def check_ff_method(ff_method: str | None, noise_sigma: float | None) -> None:
    from myocomp.imaging.dixon import FF_METHODS

    if ff_method is not None and ff_method not in FF_METHODS:
        raise DataError(f"--ff-method {ff_method!r} is not one of {', '.join(FF_METHODS)}")
    if noise_sigma is not None and not noise_sigma > 0:
        raise DataError(f"--noise-sigma must be > 0, got {noise_sigma}")


def check_image_source(water: Path | None, dicom: Path | None, *others: Path | None) -> None:
    """Exactly one of --water / --dicom; the NIfTI channel options only go with --water."""
    if (water is None) == (dicom is None):
        raise DataError("--water is required: give either --water (NIfTI) or --dicom (a DICOM folder), or --ff-map or --echoes")
    if dicom is not None and any(o is not None for o in others):
        raise DataError("--fat, --in-phase and --opposed-phase go with --water, not with --dicom")


def print_metrics(metrics, title: str) -> None:
    """Print the main metric columns as a plain aligned table (rich costs ~0.1 s of imports)."""
    columns = ["group", "volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "lmm"]
    rows = [[str(row[c]) if c == "group" else f"{row[c]:.4g}" for c in columns]
            for row in metrics[columns].to_dict(orient="records")]
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(cells, widths, strict=True)))

    typer.echo("\n".join([title, line(columns), line(["-" * w for w in widths]), *map(line, rows)]))


def _ff_input(ff_map, ff_units, echoes, water, fat, in_phase):
    """(DixonVolume carrying the given fat fraction, method name), or (None, None) without
    --ff-map/--echoes. The fat fraction then enters every metric unchanged."""
    if ff_map is None and echoes is None:
        return None, None
    if (ff_map is not None and echoes is not None) or any(x is not None for x in (water, fat, in_phase)):
        raise DataError("give one fat-fraction source: --fat (with --water), --ff-map or --echoes")
    if ff_map is not None:
        from myocomp.imaging.echoes import load_ff_map

        return load_ff_map(ff_map, units=ff_units), "ff_map"
    from myocomp.imaging.echoes import load_echo_folder, separate_echo_data
    from myocomp.imaging.fatwater import dixon_from_ff

    data = load_echo_folder(echoes)
    result = separate_echo_data(data)
    return dixon_from_ff(result.pdff, data.affine, source=str(echoes)), "separated_pdff"


@app.command()
def quantify(
    water: Path | None = typer.Option(None, "--water", help="Water image (NIfTI), or the single-contrast image when --fat is omitted. Not needed with --dicom, --ff-map or --echoes."),
    labels: Path = typer.Option(..., "--labels", help="Muscle label map (NIfTI) on the same grid as the images."),
    out: Path = typer.Option(..., "--out", help="Metrics table to write: .csv, .tsv, .parquet or .json."),
    fat: Path | None = typer.Option(None, "--fat", help="Fat image (NIfTI). Omit for the approximate single-contrast (GMM) mode."),
    in_phase: Path | None = typer.Option(None, "--in-phase", help="In-phase image: enables magnitude discrimination, which removes the noise-floor bias of FF in lean muscle."),
    opposed_phase: Path | None = typer.Option(None, "--opposed-phase", help="Opposed-phase image (checked for geometry, recorded)."),
    profile: str = typer.Option("mrsegmentator", "--profile", help="Label profile: a built-in name (see 'myocomp profiles': mrsegmentator, totalsegmentator_mr = TotalSegmentator 2.5.0+, totalsegmentator_mr_56 = 2.2.1-2.4.0, musclemap = musclemap_v1.4, ...), 'auto' (the built-in profile whose ids and anatomy fit; ambiguity is an error), or a dataset.json / {id: name} / MuscleMap model JSON file."),
    participant_id: str | None = typer.Option(None, "--participant-id", help="Participant id written in every row (default: none)."),
    bmi: float | None = typer.Option(None, "--bmi", help="Body-mass index (kg/m^2); needed for lmm, which stays empty without it."),
    fat_threshold: float = typer.Option(0.5, "--fat-threshold", help="Fat fraction tau (0-1) at and above which a voxel is adipose (InterMAT)."),
    band_mm: float = typer.Option(0.0, "--band-mm", help="Perimuscular band width in mm: unlabelled voxels this close to the muscle count towards InterMAT (0: none)."),
    groups: str = typer.Option("back,psoas", "--groups", help="Comma-separated groups: back, psoas, gluteal, all; with --vertebrae also level groups such as back_L1_L5 (the group between the top of L1 and the bottom of L5)."),
    slices: Path | None = typer.Option(None, "--slices", help="Also write the per-slice profile (csa_cm2 per slice and muscle) to this table."),
    provenance: Path | None = typer.Option(None, "--provenance", help="Also write parameters, definitions and versions as JSON."),
    fat_is_dark: bool = typer.Option(False, "--fat-is-dark", help="Single-contrast mode only: fat is the darker class (e.g. fat-suppressed T2)."),
    ff_method: str | None = typer.Option(None, "--ff-method", help="Fat-fraction estimator: ratio (plain F/(W+F)), noise-corrected (removes the Rician noise floor of water + fat magnitudes), magnitude-discrimination (needs --in-phase). Default: magnitude-discrimination with --in-phase, else noise-corrected."),
    dicom: Path | None = typer.Option(None, "--dicom", help="DICOM folder with the Dixon water and fat series (instead of --water/--fat); a folder without them is refused, naming the series found and why none is Dixon."),
    grid_from: str | None = typer.Option(None, "--grid-from", help="Declare that all images (and the label and vertebra maps) are on the voxel grid of this image (water, fat, in_phase, opposed_phase) and only their headers differ: same shape, voxel size (0.1 %) and axes; its header is used for all, nothing is resampled, and what was replaced is recorded in the provenance."),
    noise_sigma: float | None = typer.Option(None, "--noise-sigma", help="Noise sigma of the magnitude images (signal units, per real/imaginary channel). Default: estimated from the background air; recorded with the SNR in the provenance."),
    skip_anatomy_check: bool = typer.Option(False, "--skip-anatomy-check", help="Do not check the label map against anatomy (sides, back dorsal, psoas ventral, ...) for odd fields of view; ids are still checked. Recorded in the provenance."),
    ff_map: Path | None = typer.Option(None, "--ff-map", help="Vendor fat-fraction/PDFF map (NIfTI, or a DICOM folder with one fat-fraction series) used as the fat fraction instead of --water/--fat."),
    ff_units: str = typer.Option("auto", "--ff-units", help="Units of --ff-map: auto (fraction if values <= 1.05, percent if <= 105), fraction or percent."),
    echoes: Path | None = typer.Option(None, "--echoes", help="Multi-echo folder (BIDS NIfTI with sidecars, or DICOM): run 'myocomp separate' first and use its PDFF."),
    vertebrae: Path | None = typer.Option(None, "--vertebrae", help="Vertebra label map (NIfTI) on the same grid (under --grid-from: as the label map): enables --levels, groups such as back_L1_L5 and the L3 SMI."),
    vertebrae_profile: str = typer.Option("totalsegmentator_vertebrae_mr", "--vertebrae-profile", help="Label profile of --vertebrae: totalsegmentator_vertebrae_mr (vertebrae_mr: 1 sacrum, 2-6 L5-L1, 7-18 T12-T1), or a {id: name} JSON file (names like vertebrae_L3, sacrum)."),
    levels: Path | None = typer.Option(None, "--levels", help="Also write the per-level table (mid-vertebral slice and span between mid-vertebral planes, T12-S1, per muscle and group); needs --vertebrae."),
    level_axis: str = typer.Option("world", "--level-axis", help="Cranio-caudal axis of the levels: world (world S, axial cross-sections) or spine (fitted to the vertebra centroids, for a tilted patient)."),
    height_cm: float | None = typer.Option(None, "--height-cm", help="Body height (cm): with --vertebrae gives smi_l3_cm2_m2 (muscle CSA at mid-L3 / height^2)."),
) -> None:
    """Per-muscle and per-group volume, fat fraction, lean volume, InterMAT and LMM of one scan.

    The batch's QC runs too: suspicious inputs set the qc_* columns and print one warning
    line; impossible ones (an all-zero or negated channel, water identical to fat, an in-phase
    image that is not W + F) are refused. The outputs (metrics, slices, provenance) are written
    together or not at all, and never over an input.
    """
    from myocomp.cli.app import captured_warnings
    from myocomp.io import check_output_paths

    group_tuple = _check_quantify_options(out, slices, levels, vertebrae, level_axis, groups,
                                          {"--fat-threshold": fat_threshold, "--band-mm": band_mm, "--bmi": bmi})
    check_ff_method(ff_method, noise_sigma)
    ff_given, method = _ff_input(ff_map, ff_units, echoes, water, fat, in_phase)
    images = {"water": water, "fat": fat, "in_phase": in_phase, "opposed_phase": opposed_phase}
    _check_sources(ff_given, images, dicom, ff_method, grid_from)
    inputs = _input_paths(images, labels, dicom, ff_map, echoes, profile, vertebrae)
    check_output_paths({"--out": out, "--slices": slices, "--provenance": provenance, "--levels": levels}, inputs)
    if ff_given is not None:
        ff_method = "ratio"
    dixon, signal, labelmap = _read_checked(ff_given, images, dicom, labels, grid_from, profile,
                                            skip_anatomy_check, ff_map or echoes)
    vertebra_map = _vertebra_map(vertebrae, vertebrae_profile, dixon, level_axis)
    from myocomp.imaging import qc
    from myocomp.imaging.composition import quantify as run_quantify

    result = run_quantify(
        dixon, labelmap, bmi=bmi, fat_threshold=fat_threshold, band_mm=band_mm, groups=group_tuple,
        participant_id=participant_id, with_slices=slices is not None, fat_is_bright=not fat_is_dark,
        ff_method=ff_method, noise_sigma=noise_sigma, vertebrae=vertebra_map, height_cm=height_cm,
        level_axis=level_axis,
    )
    if method is not None:
        result.metrics["method"] = method
        result.provenance["fat_fraction_input"] = method
    flags = qc.assess(dixon, labelmap, group_tuple, signal=signal, ff=result.ff, box=result.box)
    metrics = qc.add_flag_columns(result.metrics, flags)
    record = dict(result.provenance, qc=flags.to_dict(), warnings=captured_warnings())
    tables = [(out, metrics), (slices, result.slices), (levels, result.levels)]
    _write_outputs(tables, provenance, record, [p for p in inputs.values() if p is not None])
    print_metrics(metrics, f"{participant_id or (water or dicom or ff_map or echoes).name}: {metrics['method'].iloc[0]}")
    raised = [c for c in qc.FLAG_COLUMNS if metrics[c].any()]
    if raised:
        typer.echo(f"warning: QC flags {', '.join(raised)}: {metrics['qc_notes'].iloc[0]}", err=True)
    typer.echo(f"wrote {out}")


def _check_quantify_options(out, slices, levels, vertebrae, level_axis, groups: str, numbers: dict):
    """Output suffixes, numeric options, --levels/--level-axis; returns the parsed --groups."""
    from myocomp.options import check_options

    check_table_suffix(out, "--out")
    if slices is not None:
        check_table_suffix(slices, "--slices")
    check_options(numbers)
    if levels is not None:
        check_table_suffix(levels, "--levels")
        if vertebrae is None:
            raise DataError("--levels needs --vertebrae (a vertebra label map)")
    if level_axis not in ("world", "spine"):
        raise DataError(f"--level-axis must be world or spine, got {level_axis!r}")
    return parse_groups(groups)


def _check_sources(ff_given, images: dict, dicom: Path | None, ff_method: str | None, grid_from: str | None) -> None:
    """One image source, and only the options that go with it."""
    if ff_given is None:
        check_image_source(images["water"], dicom, images["fat"], images["in_phase"], images["opposed_phase"])
    elif dicom is not None or (ff_method or "ratio") != "ratio":
        raise DataError("--ff-map/--echoes give the fat fraction itself: no --dicom, no --ff-method other than ratio")
    if grid_from is not None and dicom is not None:
        raise DataError("--grid-from goes with NIfTI images (--water ...), not with --dicom")


def _input_paths(images: dict, labels: Path, dicom, ff_map, echoes, profile: str, vertebrae) -> dict:
    """Option -> input path (none may be overwritten by an output)."""
    inputs = {f"--{k.replace('_', '-')}": v for k, v in images.items()} | {"--labels": labels, "--dicom": dicom}
    inputs |= {"--ff-map": ff_map, "--echoes": echoes}
    if Path(profile).is_file():
        inputs["--profile"] = Path(profile)
    if vertebrae is not None:
        inputs["--vertebrae"] = vertebrae
    return inputs


def _read_checked(ff_given, images: dict, dicom, labels: Path, grid_from, profile: str, skip_anatomy_check: bool,
                  ff_source):
    """(DixonVolume, its signal check, LabelMap): impossible channels are refused here.

    The reads and checks run in threads (gzip decoding and numpy release the GIL) while this
    thread imports what the metrics and QC need. Errors come in a fixed order: an unreadable
    image, then the label file, then an impossible channel, then the label map's own checks.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from myocomp._startup import paused_gc, quick_thread_switches
    from myocomp.imaging import qc
    from myocomp.imaging.dixon import load_nifti
    from myocomp.imaging.labels import AUTO_PROFILE, get_profile

    label_profile = profile if profile.lower() == AUTO_PROFILE else get_profile(profile)
    with quick_thread_switches(), ThreadPoolExecutor(max_workers=4) as pool:
        if ff_given is None:
            dixon_job = pool.submit(_read_images, images, dicom, grid_from)
        else:
            dixon_job = Future()
            dixon_job.set_result(ff_given)
        label_job = pool.submit(load_nifti, labels, "label map")
        signal_job = pool.submit(lambda: qc.signal_check(dixon_job.result()))
        pool.submit(_volume_statistics, dixon_job)
        labelmap_job = pool.submit(_checked_labelmap, dixon_job, label_job, labels, label_profile, skip_anatomy_check)
        with paused_gc():
            import scipy.ndimage  # noqa: F401  (QC's morphology)

            import myocomp.imaging.composition  # noqa: F401
            import myocomp.io  # noqa: F401
        dixon = dixon_job.result()
        label_job.result()  # an unreadable label file is named before the signal's refusals
        signal = signal_job.result()
        if signal.errors:  # impossible channels are named before the label map's problems
            role, reason = signal.errors[0]
            raise DataError(reason, source=images.get(role) or dicom or ff_source)
        return dixon, signal, labelmap_job.result()


def _volume_statistics(dixon_job) -> None:
    """What quantify needs of the whole volume, cached on it: noise estimate, floor, negatives."""
    dixon = dixon_job.result()
    dixon.background_noise, dixon.noise_floor, dixon.negative_counts  # noqa: B018


def _read_images(images: dict, dicom: Path | None, grid_from: str | None):
    """The DixonVolume of --dicom or of the NIfTI channels."""
    if dicom is not None:
        from myocomp.imaging.dicom import read_dicom_dixon

        return read_dicom_dixon(dicom)
    from myocomp.imaging.dixon import load_dixon

    return load_dixon(images["water"], images["fat"], in_phase=images["in_phase"],
                      opposed_phase=images["opposed_phase"], grid_from=grid_from)


def _checked_labelmap(dixon_job, label_job, labels: Path, label_profile, skip_anatomy_check: bool):
    """The LabelMap on the images' grid, once both are read (the anatomy check included)."""
    from myocomp.imaging.labelmap import label_grid, labelmap_from_array

    dixon, label_img = dixon_job.result(), label_job.result()
    affine = label_grid(label_img, dixon.grid, labels)
    return labelmap_from_array(label_img.dataobj, affine, label_profile, dixon, source=str(labels),
                               anatomy_check=not skip_anatomy_check)


def _vertebra_map(vertebrae: Path | None, vertebrae_profile: str, dixon, level_axis: str):
    """The vertebra label map on the images' grid (None without --vertebrae)."""
    if vertebrae is None:
        return None
    from myocomp.imaging.labels import get_profile
    from myocomp.imaging.levels import load_vertebrae

    return load_vertebrae(vertebrae, get_profile(vertebrae_profile), reference=dixon, axis=level_axis)


def _write_outputs(tables: list, provenance: Path | None, record: dict, protect: list) -> None:
    """Write the tables ((path, frame) pairs; None paths/frames skipped) and the provenance, all or none."""
    from myocomp.io import staged_outputs, write_json, write_table

    with staged_outputs(protect=protect) as stage:
        for path, table in tables:
            if path is not None and table is not None:
                write_table(table, stage.file(path))
        if provenance is not None:
            write_json(record, stage.file(provenance))


@app.command()
def profiles() -> None:
    """List the built-in label profiles: tool, releases covered, id range and the table read."""
    from myocomp.imaging.labels import PROFILE_ALIASES, builtin_profiles

    aliases: dict[str, list[str]] = {}
    for alias, target in PROFILE_ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    for p in builtin_profiles():
        also = f" (also: {', '.join(aliases[p.name])})" if p.name in aliases else ""
        typer.echo(f"{p.name}{also}: {p.tool} {p.versions}; ids {min(p.ids)}-{max(p.ids)}, "
                   f"{len(p.ids)} labels, {len(p.muscle_ids())} muscles")
        typer.echo(f"    source: {p.source}")
