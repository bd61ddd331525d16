"""Label maps: load a label volume and check it against its image, its profile and the anatomy.

The loader sits above both the label vocabulary (:mod:`myocomp.imaging.labels`) and the anatomy
rules (:mod:`myocomp.imaging.anatomy`), which builds on that vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from myocomp.errors import GeometryError, LabelError
from myocomp.imaging.anatomy import verify_profile
from myocomp.imaging.dixon import adopt_grid, canonical, check_affine, load_nifti, same_grid
from myocomp.imaging.labels import AUTO_PROFILE, LabelMap, LabelProfile, get_profile


def labelmap_from_array(
    data: np.ndarray,
    affine: np.ndarray,
    profile: LabelProfile | str,
    reference: Any | None = None,
    source: str | None = None,
    *,
    anatomy_check: bool = True,
) -> LabelMap:
    """Validate an in-memory label volume and return a canonical :class:`LabelMap`.

    Checks: 3-D integer values, (with a ``reference`` DixonVolume) the same grid as the reference
    after canonical reorientation, ids known to the profile, at least one muscle label, and the
    anatomy the profile implies (:func:`myocomp.imaging.anatomy.verify_profile`; the reference's
    water image gives the body outline). ``profile="auto"`` chooses the built-in profile that
    fits; ``anatomy_check=False`` skips the anatomy rules (recorded in ``LabelMap.anatomy``).
    """
    if not isinstance(profile, LabelProfile) and str(profile).lower() != AUTO_PROFILE:
        profile = get_profile(profile)
    data = np.asarray(data)
    if data.ndim != 3:
        raise GeometryError(f"label map has {data.ndim} dimensions; 3 are needed", source=source)
    check_affine(affine, source=source, role="label map")
    if not np.issubdtype(data.dtype, np.integer) and (
        not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data))
    ):
        raise LabelError("label map holds non-integer values", source=source)
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.int32)
    data, new_affine = canonical(data, np.asarray(affine, dtype=float))
    if reference is not None:
        check_on_grid(data.shape, new_affine, reference, "label map", "labels", source)
    image = getattr(reference, "water", None)
    profile, record = verify_profile(data, new_affine, profile, image=image, check=anatomy_check, source=source)
    return LabelMap(data=data, affine=new_affine, profile=profile, anatomy=record)


def check_on_grid(shape: tuple[int, ...], affine: np.ndarray, reference: Any, role: str, what: str,
                  source: str | Path | None = None) -> None:
    """Refuse a canonical label volume (``shape``, 4 x 4 ``affine``) that is not on the grid of
    ``reference`` (a DixonVolume): :class:`GeometryError` naming ``source``, e.g. ``"label map
    shape (..) differs from image shape (..): labels are on another grid"``."""
    if tuple(shape) != tuple(reference.shape):
        raise GeometryError(f"{role} shape {tuple(shape)} differs from image shape {tuple(reference.shape)}: "
                            f"{what} are on another grid", source=source)
    if not same_grid(affine, reference.affine, shape=reference.shape):
        raise GeometryError(f"{role} affine differs from the image's by up to "
                            f"{np.abs(affine - reference.affine).max():.3g} mm: {what} are on another grid",
                            source=source)


def load_labels(
    path: str | Path, profile: LabelProfile | str, reference: Any | None = None, *, anatomy_check: bool = True
) -> LabelMap:
    """Load a label map NIfTI (see :func:`labelmap_from_array` for the checks). Under a declared
    shared grid (``reference.grid``, ``--grid-from``) the label map takes the grid's header too
    (:func:`label_grid`)."""
    img = load_nifti(path, role="label map")
    affine = label_grid(img, getattr(reference, "grid", None), path)
    return labelmap_from_array(
        np.asanyarray(img.dataobj), affine, profile, reference, source=str(path), anatomy_check=anatomy_check
    )


def label_grid(label_img, grid: dict | None, path: str | Path, role: str = "label map") -> np.ndarray:
    """The affine (4 x 4) of a label map (``role``: also ``"vertebra map"``): its own without a
    declared grid (``grid`` None); under one (``--grid-from``, a DixonVolume's ``grid``) the
    grid's affine if :func:`~myocomp.imaging.dixon.adopt_grid` allows it, which raises
    :class:`GeometryError` naming ``path`` otherwise; a replaced header is recorded in
    ``grid["replaced"][role]``."""
    if grid is None:
        return label_img.affine
    grid_affine = np.asarray(grid["affine"])
    change = adopt_grid(label_img.shape, label_img.affine, tuple(grid["shape"]), grid_affine, role,
                        grid["from"], path)
    if change:
        grid["replaced"][role] = change
    return grid_affine
