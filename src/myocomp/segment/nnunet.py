"""nnU-Net v2 backend: run a trained nnU-Net results folder on in-memory Dixon arrays.

A *results folder* is what nnU-Net v2 writes after training (and what MRSegmentator,
TotalSegmentator and TotalVibeSegmentator publish): ``dataset.json``, ``plans.json`` and
``fold_*/checkpoint_final.pth``. This module loads it through ``nnunetv2``'s own
:class:`~nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` (created once per process
and reused for every image), feeds it the arrays in the axis order and orientation the model
was trained on, and returns labels aligned voxel for voxel with the input grid.

Axis order. Every nnU-Net reader (SimpleITKIO, NibabelIO, NibabelIOWithReorient) hands the
network the voxel array as ``(k, j, i)`` with the spacing reversed to ``(sk, sj, si)``. They
differ in *which* voxel grid: NibabelIOWithReorient first reorients to RAS; SimpleITKIO and
NibabelIO use the file as stored, so the model expects whatever orientation its training files
had (TotalSegmentator reorients to RAS before calling nnU-Net; MRSegmentator reorients to
LPS). We therefore reorient the input to the model's *input axcodes* (RAS unless the model
registry or the caller says otherwise), transpose to ``(k, j, i)``, predict, and undo both
steps, so the result is on the caller's grid whatever the stored orientation.

Channels. ``dataset.json["channel_names"]`` says what each input channel is. Names ``water``,
``fat``, ``in_phase`` and ``opposed_phase`` (and common abbreviations) take that Dixon image.
A single-channel model with any other name (e.g. MRSegmentator's ``"MRI"``, "any MR contrast")
gets the in-phase image when the volume has one, else water + fat (the in-phase signal
magnitude of a two-point Dixon), else the water image alone (single-contrast input).

TTA mirroring: the default ``mirroring=True`` keeps nnU-Net's default, i.e. test-time
mirroring along the axes the checkpoint allows (``inference_allowed_mirroring_axes``); a
checkpoint that stores ``None`` (like ``phantom-demo``, whose labels are sided) gets none.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    io_orientation,
    ornt_transform,
)

from myocomp.errors import ConfigError, GeometryError, InputFileError, LabelError
from myocomp.imaging.dixon import voxel_spacing

if TYPE_CHECKING:  # pragma: no cover
    from myocomp.imaging.dixon import DixonVolume
    from myocomp.imaging.labels import LabelMap, LabelProfile

__all__ = [
    "ModelSpec",
    "channel_arrays",
    "image_channels",
    "in_phase_sum",
    "clear_predictors",
    "get_predictor",
    "load_model_spec",
    "segment_arrays",
    "segment_dixon",
]

_CHANNEL_ALIASES = {
    "water": "water",
    "w": "water",
    "fat": "fat",
    "f": "fat",
    "in_phase": "in_phase",
    "inphase": "in_phase",
    "in-phase": "in_phase",
    "ip": "in_phase",
    "in": "in_phase",
    "opposed_phase": "opposed_phase",
    "opposedphase": "opposed_phase",
    "opposed-phase": "opposed_phase",
    "out_phase": "opposed_phase",
    "outphase": "opposed_phase",
    "op": "opposed_phase",
    "opp": "opposed_phase",
}

_PREDICTORS: dict[tuple[Any, ...], Any] = {}
_PREDICTORS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """What myocomp needs to know about an nnU-Net v2 results folder.

    Attributes
    ----------
    path : results folder (contains dataset.json, plans.json, fold_*/).
    channel_names : channel names in input order, from dataset.json.
    labels : label name -> id, from dataset.json.
    reader : the plans' ``image_reader_writer`` (how nnU-Net read its training images).
    input_axcodes : orientation (nibabel axis codes, e.g. ``"RAS"``) of the voxel grid the model
        expects before nnU-Net's ``(k, j, i)`` transposition.
    folds : folds that have a ``checkpoint_final.pth``.
    """

    path: Path
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    reader: str
    input_axcodes: str
    folds: tuple[int | str, ...]

    @property
    def dataset_json(self) -> Path:
        return self.path / "dataset.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(
            "not found (is this an nnU-Net v2 results folder?)", source=path
        ) from None
    except (OSError, ValueError) as exc:
        raise InputFileError(f"unreadable JSON ({exc})", source=path) from None


def _find_folds(path: Path, checkpoint: str = "checkpoint_final.pth") -> tuple[int | str, ...]:
    folds: list[int | str] = []
    for sub in sorted(path.glob("fold_*")):
        if not (sub / checkpoint).is_file():
            continue
        tag = sub.name[len("fold_") :]
        folds.append(int(tag) if tag.isdigit() else tag)
    ints = sorted(f for f in folds if isinstance(f, int))
    # "fold_all" is a separate model trained on all data; nnU-Net only uses it when asked.
    return tuple(ints) if ints else tuple(folds)


def load_model_spec(model_dir: str | Path, input_axcodes: str | None = None) -> ModelSpec:
    """Read dataset.json and plans.json of an nnU-Net v2 results folder (no torch needed).

    ``input_axcodes`` overrides the orientation the model expects (default: the value in
    the myocomp model registry for a registered model, else ``"RAS"``).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise InputFileError("model folder not found", source=path)
    dataset = _read_json(path / "dataset.json")
    plans = _read_json(path / "plans.json")
    try:
        channels = dataset["channel_names"]
        names = tuple(str(channels[k]) for k in sorted(channels, key=int))
        labels = {str(k): int(v) for k, v in dataset["labels"].items() if not isinstance(v, list)}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputFileError(
            f"dataset.json lacks valid channel_names/labels ({exc})", source=path / "dataset.json"
        ) from None
    if any(isinstance(v, list) for v in dataset["labels"].values()):
        raise ConfigError(
            "region-based nnU-Net models (labels given as lists) are not supported",
            source=path / "dataset.json",
        )
    folds = _find_folds(path)
    if not folds:
        raise InputFileError("no fold_*/checkpoint_final.pth found", source=path)
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if input_axcodes is None:
        from myocomp.segment.models import registry_axcodes_for

        input_axcodes = registry_axcodes_for(path) or "RAS"
    axcodes = input_axcodes.upper()
    if len(axcodes) != 3 or sorted(axcodes.translate(str.maketrans("LPI", "RAS"))) != [
        "A",
        "R",
        "S",
    ]:
        raise ConfigError(f"invalid orientation {input_axcodes!r} (expected e.g. RAS or LPS)")
    return ModelSpec(path, names, labels, reader, axcodes, folds)


def _resolve_device(device: str) -> Any:
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA device")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    return torch.device(name)


def _normalise_folds(folds: Sequence[int | str] | str | None) -> tuple[int | str, ...] | None:
    if folds is None:
        return None
    if isinstance(folds, str):
        folds = [f for f in folds.split(",") if f.strip()]
    out: list[int | str] = []
    for f in folds:
        text = str(f).strip()
        out.append(int(text) if text.isdigit() else text)
    return tuple(out)


def _build_predictor(
    spec: ModelSpec,
    device: Any,
    folds: tuple[int | str, ...],
    mirroring: bool,
    tile_step_size: float,
) -> Any:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = _read_json(spec.dataset_json)
    plans_manager = PlansManager(_read_json(spec.path / "plans.json"))
    parameters = []
    trainer_name = configuration = mirror_axes = None
    for i, fold in enumerate(folds):
        ckpt_path = spec.path / f"fold_{fold}" / "checkpoint_final.pth"
        if not ckpt_path.is_file():
            raise InputFileError(f"fold {fold} has no checkpoint_final.pth", source=ckpt_path)
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a corrupt or foreign file
            raise InputFileError(f"cannot load checkpoint ({exc})", source=ckpt_path) from None
        if i == 0:
            trainer_name = ckpt.get("trainer_name", "nnUNetTrainer")
            configuration = ckpt["init_args"]["configuration"]
            mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        parameters.append(ckpt["network_weights"])
    config_manager = plans_manager.get_configuration(configuration)
    label_manager = plans_manager.get_label_manager(dataset_json)
    # Built from the plans' architecture (what nnUNetTrainer.build_network_architecture does),
    # so that no trainer module has to be imported: custom trainer names (MRSegmentator's) and
    # environments where nnU-Net's training stack does not import still work.
    network = get_network_from_plans(
        config_manager.network_arch_class_name,
        config_manager.network_arch_init_kwargs,
        config_manager.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, config_manager, dataset_json),
        label_manager.num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )
    network.load_state_dict(parameters[0])
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network,
            plans_manager,
            config_manager,
            parameters,
            dataset_json,
            trainer_name,
            tuple(mirror_axes) if mirror_axes is not None else None,
        )
    predictor.network.to(device)
    predictor.network.eval()
    return predictor


def get_predictor(
    model_dir: str | Path,
    device: str = "auto",
    folds: Sequence[int | str] | str | None = None,
    *,
    mirroring: bool = True,
    tile_step_size: float = 0.5,
) -> Any:
    """The ``nnUNetPredictor`` for a results folder, created once per process and reused.

    Parameters
    ----------
    model_dir : nnU-Net v2 results folder.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    folds : folds to ensemble (e.g. ``(0, 1)`` or ``"0,1"``); default all folds present.
    mirroring : test-time mirroring along the axes the checkpoint allows (nnU-Net default).
    tile_step_size : sliding-window step as a fraction of the patch size (nnU-Net default 0.5).

    The cache key is (resolved folder, device, folds, mirroring, tile step); the same key
    returns the same object.
    """
    spec = load_model_spec(model_dir)
    dev = _resolve_device(device)
    use_folds = _normalise_folds(folds) or spec.folds
    key = (str(spec.path.resolve()), str(dev), use_folds, bool(mirroring), float(tile_step_size))
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            predictor = _build_predictor(spec, dev, use_folds, mirroring, tile_step_size)
            _PREDICTORS[key] = predictor
    return predictor


def clear_predictors() -> None:
    """Forget every cached predictor (frees their memory)."""
    with _PREDICTORS_LOCK:
        _PREDICTORS.clear()


def in_phase_sum(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Water + fat (float32, the shape of both): the in-phase signal magnitude of a two-point
    Dixon, the input a single-channel model gets from a water/fat pair."""
    return np.asarray(water, np.float32) + np.asarray(fat, np.float32)


def image_channels(images: Sequence[np.ndarray], channel_names: Sequence[str],
                   model: str = "model") -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
    """The model's input channels from ``images`` given in ``channel_names`` order.

    A single-channel model given two images (water, fat) gets their :func:`in_phase_sum`.
    Returns the float32 channels and, per channel, the indices of the images it was made of;
    raises :class:`ConfigError` (naming ``model``) when the number of images does not fit.
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in images]
    if len(channel_names) == 1 and len(arrays) == 2:
        return [in_phase_sum(*arrays)], [(0, 1)]
    if len(arrays) != len(channel_names):
        raise ConfigError(
            f"model {model} expects {len(channel_names)} image(s) in this order: "
            f"{list(channel_names)}; got {len(arrays)}"
        )
    return arrays, [(i,) for i in range(len(arrays))]


def channel_arrays(dixon: DixonVolume, channel_names: Sequence[str]) -> list[np.ndarray]:
    """The Dixon images in the model's channel order (see the module docstring for the rules).

    Returns float32 arrays shaped like ``dixon.shape``. Raises ConfigError for a channel name
    that cannot be mapped and InputFileError when the volume lacks a needed image.
    """
    images = {
        "water": dixon.water,
        "fat": dixon.fat,
        "in_phase": getattr(dixon, "in_phase", None),
        "opposed_phase": getattr(dixon, "opposed_phase", None),
    }
    out: list[np.ndarray] = []
    for name in channel_names:
        role = _CHANNEL_ALIASES.get(name.strip().lower())
        if role is None:
            if len(channel_names) != 1:
                raise ConfigError(
                    f"model channel {name!r} cannot be mapped to a Dixon image "
                    f"(known: water, fat, in_phase, opposed_phase)"
                )
            if images["in_phase"] is not None:
                arr = images["in_phase"]
            elif images["water"] is not None and images["fat"] is not None:
                arr = in_phase_sum(images["water"], images["fat"])
            elif images["water"] is not None:
                arr = images["water"]
            else:
                raise InputFileError(f"no image for model channel {name!r}", source=dixon.source)
        else:
            arr = images[role]
            if arr is None:
                raise InputFileError(
                    f"model needs the {role} image but the volume has none", source=dixon.source
                )
        out.append(np.asarray(arr, dtype=np.float32))
    return out


def segment_arrays(
    channels: Sequence[np.ndarray],
    affine: np.ndarray,
    model: str | Path,
    device: str = "auto",
    folds: Sequence[int | str] | str | None = None,
    *,
    mirroring: bool = True,
    input_axcodes: str | None = None,
) -> np.ndarray:
    """Segment 3-D images with an nnU-Net v2 model; labels on the input grid.

    Parameters
    ----------
    channels : one 3-D array per model input channel, in dataset.json ``channel_names`` order,
        all of shape ``(I, J, K)`` on the grid given by ``affine`` (any orientation, including
        permuted, flipped and oblique grids).
    affine : 4x4 voxel -> world (mm, RAS+) matrix of that grid.
    model : results folder or registered model name (see :mod:`myocomp.segment.models`).
    device, folds, mirroring : see :func:`get_predictor`.
    input_axcodes : override the orientation the model expects (default from the registry or
        ``"RAS"``).

    Returns
    -------
    Integer array of shape ``(I, J, K)`` with the model's label ids (uint8 or uint16).
    """
    from myocomp.segment.models import resolve_model

    spec = load_model_spec(resolve_model(model), input_axcodes)
    arrays = [np.asarray(c) for c in channels]
    if len(arrays) != len(spec.channel_names):
        raise ConfigError(
            f"model expects {len(spec.channel_names)} channel(s) {list(spec.channel_names)}, "
            f"got {len(arrays)}"
        )
    shape = arrays[0].shape
    if len(shape) != 3 or any(a.shape != shape for a in arrays):
        raise GeometryError(
            f"channels must be 3-D arrays of one shape, got {[a.shape for a in arrays]}"
        )
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError("affine must be a finite 4x4 matrix")
    zooms = np.asarray(voxel_spacing(affine))
    if np.any(zooms <= 0):
        raise GeometryError("affine has a zero-length voxel axis")

    to_model = ornt_transform(io_orientation(affine), axcodes2ornt(spec.input_axcodes))
    model_zooms = np.empty(3)
    model_zooms[to_model[:, 0].astype(int)] = zooms
    data = np.stack(
        [
            apply_orientation(a.astype(np.float32, copy=False), to_model).transpose(2, 1, 0)
            for a in arrays
        ]
    )
    predictor = get_predictor(spec.path, device, folds, mirroring=mirroring)
    seg = predictor.predict_single_npy_array(
        np.ascontiguousarray(data), {"spacing": [float(z) for z in model_zooms[::-1]]}
    )
    seg = np.asarray(seg).transpose(2, 1, 0)
    back = ornt_transform(axcodes2ornt(spec.input_axcodes), io_orientation(affine))
    out = np.ascontiguousarray(apply_orientation(seg, back))
    if out.shape != shape:  # pragma: no cover - would be an nnU-Net contract violation
        raise GeometryError(f"prediction shape {out.shape} differs from input {shape}")
    dtype = np.uint8 if out.max(initial=0) < 256 else np.uint16
    return out.astype(dtype, copy=False)


def segment_dixon(
    dixon: DixonVolume,
    model: str | Path,
    device: str = "auto",
    folds: Sequence[int | str] | str | None = None,
    *,
    profile: LabelProfile | str | Path | None = None,
    mirroring: bool = True,
    input_axcodes: str | None = None,
) -> LabelMap:
    """Segment a :class:`~myocomp.imaging.dixon.DixonVolume`; a LabelMap on the same grid.

    The model's channels are taken from the volume by name (module docstring). The label
    profile is derived from dataset.json's label names unless ``profile`` (a LabelProfile, a
    built-in profile name or a mapping/dataset.json path) is given.
    """
    from myocomp.imaging.labelmap import labelmap_from_array
    from myocomp.imaging.labels import get_profile, present_label_ids, profile_from_dataset_json
    from myocomp.segment.models import resolve_model

    spec = load_model_spec(resolve_model(model), input_axcodes)
    if profile is None or (isinstance(profile, str) and profile == "auto"):
        prof = profile_from_dataset_json(spec.dataset_json)
    elif isinstance(profile, str | Path):
        prof = get_profile(profile)
    else:
        prof = profile
    data = segment_arrays(
        channel_arrays(dixon, spec.channel_names),
        dixon.affine,
        spec.path,
        device,
        folds,
        mirroring=mirroring,
        input_axcodes=spec.input_axcodes,
    )
    unknown = sorted(set(present_label_ids(data).tolist()) - set(prof.ids))
    if unknown:
        raise LabelError(f"model produced label ids {unknown} that profile {prof.name!r} lacks")
    return labelmap_from_array(data, dixon.affine, prof, reference=dixon)
