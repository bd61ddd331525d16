"""Label vocabulary: canonical muscle names, groups, and the versioned label profiles of segmenters.

A *label profile* maps one tool's label ids to names. Muscles get canonical names (lower case,
side last: ``autochthon_left``); fat classes keep canonical tissue names (``subcutaneous_fat``,
``visceral_fat``, ``torso_fat``, ``inner_fat``); other structures keep the tool's own name. Every
built-in profile records the tool, the releases it covers and the table it was read from
(:data:`PROFILE_INFO`, ``myocomp profiles``). Two releases of one tool that number their classes
differently are two profiles; :mod:`myocomp.imaging.anatomy` checks a label map against the
anatomy its profile implies, so a map read with the wrong release's table is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from myocomp.errors import LabelError

SIDES = ("left", "right")

#: Base names (without side) of structures that count as skeletal muscle.
MUSCLE_BASES = frozenset(
    {
        "autochthon", "erector_spinae", "multifidus", "iliopsoas", "psoas_major", "iliacus",
        "quadratus_lumborum", "latissimus_dorsi", "gluteus_maximus", "gluteus_medius",
        "gluteus_minimus", "tensor_fascia_latae", "quadriceps", "quadriceps_femoris",
        "thigh_medial_compartment", "thigh_posterior_compartment", "sartorius",
        "vastus_lateralis", "vastus_intermedius", "vastus_medialis", "rectus_femoris", "gracilis",
        "semimembranosus", "semitendinosus", "biceps_femoris_long_head",
        "biceps_femoris_short_head", "adductor_magnus", "adductor_longus", "adductor_brevis",
        "soleus", "gastrocnemius", "leg_anterior_compartment", "leg_deep_posterior_compartment",
        "leg_lateral_compartment", "levator_scapulae", "semispinalis_cervicis_multifidus",
        "semispinalis_capitis", "splenius_capitis", "sternocleidomastoid", "longus_colli",
        "trapezius", "supraspinatus", "subscapularis", "infraspinatus", "deltoid", "rhomboid",
        "muscle", "rectus_abdominis", "abdominal_oblique", "coracobrachialis", "pectoralis_minor",
        "serratus_anterior", "teres_major", "triceps_brachii", "piriformis", "pectineus",
        "obturator_internus", "obturator_externus", "gemelli_quadratus_femoris",
        "tibialis_anterior", "tibialis_posterior", "peroneus_longus", "medial_gastrocnemius",
        "lateral_gastrocnemius", "flexor_hallucis_longus", "extensor_digitorum_hallucis_longus",
        "flexor_digitorum_longus", "popliteus", "plantaris",
    }
)

#: Tissue labels some models provide.
TISSUE_LABELS = ("subcutaneous_fat", "visceral_fat", "torso_fat", "inner_fat", "muscle")
#: Fat classes (canonical tissue names); the MRSegmentator body-composition regions of
#: subcutaneous fat keep their region in the name.
FAT_LABELS = frozenset(
    {"subcutaneous_fat", "visceral_fat", "torso_fat", "inner_fat", "abdominal_subcutaneous_fat",
     "gluteofemoral_fat"}
)

#: Muscle groups by member base names; ``all`` means every muscle label present.
GROUP_BASES: dict[str, frozenset[str] | None] = {
    "back": frozenset({"autochthon", "erector_spinae", "multifidus"}),
    "psoas": frozenset({"iliopsoas", "psoas_major", "iliacus"}),
    "gluteal": frozenset({"gluteus_maximus", "gluteus_medius", "gluteus_minimus"}),
    "all": None,
}

CANONICAL_MUSCLES = tuple(
    f"{base}_{side}"
    for base in ("autochthon", "iliopsoas", "gluteus_maximus", "gluteus_medius", "gluteus_minimus")
    for side in SIDES
)
GROUPS: dict[str, tuple[str, ...] | None] = {
    "back": ("autochthon_left", "autochthon_right"),
    "psoas": ("iliopsoas_left", "iliopsoas_right"),
    "gluteal": tuple(m for m in CANONICAL_MUSCLES if m.startswith("gluteus")),
    "all": None,
}


def base_name(name: str) -> str:
    """Name without its side suffix: ``autochthon_left`` -> ``autochthon``."""
    for side in SIDES:
        if name.endswith(f"_{side}"):
            return name[: -len(side) - 1]
    return name


def is_muscle(name: str) -> bool:
    """True if ``name`` (canonical) is a skeletal muscle label."""
    return base_name(name) in MUSCLE_BASES


def group_members(group: str, names: list[str] | tuple[str, ...]) -> list[str]:
    """The names among ``names`` that belong to ``group`` (sorted); raises LabelError if unknown."""
    if group not in GROUP_BASES:
        raise LabelError(f"unknown group {group!r}; known groups: {', '.join(GROUP_BASES)}")
    bases = GROUP_BASES[group]
    return sorted(n for n in names if is_muscle(n) and (bases is None or base_name(n) in bases))


_SIDE_TOKENS = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right", "rt": "right"}
_BASE_SYNONYMS = {
    "autochthonous": "autochthon", "autochthonous_muscle": "autochthon",
    "autochthon_muscle": "autochthon", "iliopsoas_muscle": "iliopsoas", "psoas": "psoas_major",
    "lattisimus_dorsi": "latissimus_dorsi", "thoracolumbar_multifidus": "multifidus",
    "semispinalis_cervicis_and_multifidus": "semispinalis_cervicis_multifidus",
    "skeletal_muscle": "muscle", "latissimus_dorsi_muscle": "latissimus_dorsi",
    "tensor_fasciae_latae": "tensor_fascia_latae", "coracobrachial": "coracobrachialis",
    "gemelli_and_quadratus_femoris": "gemelli_quadratus_femoris", "oblique_muscle": "abdominal_oblique",
}


def canonical_name(name: str) -> str:
    """Normalise a tool's structure name to the canonical form (lower case, side last).

    >>> canonical_name("Left autochthonous muscle")
    'autochthon_left'
    >>> canonical_name("iliopsoas_right")
    'iliopsoas_right'
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.strip().lower()) if t]
    sides = [_SIDE_TOKENS[t] for t in tokens if t in _SIDE_TOKENS]
    rest = [t for t in tokens if t not in _SIDE_TOKENS]
    base = "_".join(rest)
    base = _BASE_SYNONYMS.get(base, base)
    return f"{base}_{sides[-1]}" if len(sides) == 1 and base else base or name


@dataclass(frozen=True)
class LabelProfile:
    """Maps a segmenter's label ids to names (canonical for muscles). Id 0 is background."""

    name: str
    ids: dict[int, str] = field(hash=False)
    tool: str = ""
    versions: str = ""
    source: str = ""

    def muscle_ids(self) -> dict[int, str]:
        """The ids that denote skeletal muscles, with their canonical names."""
        return {i: n for i, n in self.ids.items() if is_muscle(n)}

    def id_of(self, name: str) -> int:
        for i, n in self.ids.items():
            if n == name:
                return i
        raise LabelError(f"profile {self.name!r} has no label named {name!r}")


def _sided(base_ids: dict[str, tuple[int, int]]) -> dict[int, str]:
    return {i: f"{b}_{s}" for b, pair in base_ids.items() for i, s in zip(pair, SIDES, strict=True)}


_MRSEG = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_left",
    11: "lung_right", 12: "heart", 13: "aorta", 14: "inferior_vena_cava",
    15: "portal_vein_and_splenic_vein", 16: "iliac_artery_left", 17: "iliac_artery_right",
    18: "iliac_vena_left", 19: "iliac_vena_right", 20: "esophagus", 21: "small_bowel",
    22: "duodenum", 23: "colon", 24: "urinary_bladder", 25: "spine", 26: "sacrum",
    27: "hip_left", 28: "hip_right", 29: "femur_left", 30: "femur_right",
    **_sided({
        "autochthon": (31, 32), "iliopsoas": (33, 34), "gluteus_maximus": (35, 36),
        "gluteus_medius": (37, 38), "gluteus_minimus": (39, 40),
    }),
}

_TOTAL_MR_COMMON = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_left",
    11: "lung_right", 12: "esophagus", 13: "small_bowel", 14: "duodenum", 15: "colon",
    16: "urinary_bladder", 17: "prostate", 18: "sacrum", 19: "vertebrae",
    20: "intervertebral_discs", 21: "spinal_cord", 22: "heart", 23: "aorta",
    24: "inferior_vena_cava", 25: "portal_vein_and_splenic_vein", 26: "iliac_artery_left",
    27: "iliac_artery_right", 28: "iliac_vena_left", 29: "iliac_vena_right",
    30: "humerus_left", 31: "humerus_right",
}
_TOTAL_MR = {  # 2.5.0+: 50 classes
    **_TOTAL_MR_COMMON, 32: "scapula_left", 33: "scapula_right", 34: "clavicula_left",
    35: "clavicula_right", 36: "femur_left", 37: "femur_right", 38: "hip_left", 39: "hip_right",
    **_sided({
        "gluteus_maximus": (40, 41), "gluteus_medius": (42, 43), "gluteus_minimus": (44, 45),
        "autochthon": (46, 47), "iliopsoas": (48, 49),
    }),
    50: "brain",
}
_TOTAL_MR_56 = {  # 2.2.1-2.4.0: 56 classes
    **_TOTAL_MR_COMMON, 32: "fibula", 33: "tibia", 34: "femur_left", 35: "femur_right",
    36: "hip_left", 37: "hip_right",
    **_sided({
        "gluteus_maximus": (38, 39), "gluteus_medius": (40, 41), "gluteus_minimus": (42, 43),
        "autochthon": (44, 45), "iliopsoas": (46, 47), "quadriceps_femoris": (48, 49),
        "thigh_medial_compartment": (50, 51), "thigh_posterior_compartment": (52, 53),
        "sartorius": (54, 55),
    }),
    56: "brain",
}
_TISSUE_TYPES_MR = {1: "subcutaneous_fat", 2: "torso_fat", 3: "muscle"}
_THIGH_SHOULDER_MR = {
    **_sided({
        "quadriceps_femoris": (1, 2), "thigh_medial_compartment": (3, 4),
        "thigh_posterior_compartment": (5, 6), "sartorius": (7, 8),
    }),
    9: "deltoid", 10: "supraspinatus", 11: "infraspinatus", 12: "subscapularis",
    13: "coracobrachialis", 14: "trapezius", 15: "pectoralis_minor", 16: "serratus_anterior",
    17: "teres_major", 18: "triceps_brachii",
}
_MRSEG_BODYCOMP = {
    1: "subcutaneous_fat", 2: "visceral_fat",
    **_sided({"rectus_abdominis": (3, 4), "abdominal_oblique": (5, 6), "quadratus_lumborum": (7, 8)}),
    9: "abdominal_subcutaneous_fat", 10: "gluteofemoral_fat",
}
_TOTALVIBE = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right", 13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right", 15: "esophagus", 16: "trachea", 17: "thyroid_gland",
    18: "intestine", 19: "duodenum", 20: "unused", 21: "urinary_bladder", 22: "prostate",
    23: "sacrum", 24: "heart", 25: "aorta", 26: "pulmonary_vein", 27: "brachiocephalic_trunk",
    28: "subclavian_artery_right", 29: "subclavian_artery_left",
    30: "common_carotid_artery_right", 31: "common_carotid_artery_left",
    32: "brachiocephalic_vein_left", 33: "brachiocephalic_vein_right",
    34: "atrial_appendage_left", 35: "superior_vena_cava", 36: "inferior_vena_cava",
    37: "portal_vein_and_splenic_vein", 38: "iliac_artery_left", 39: "iliac_artery_right",
    40: "iliac_vena_left", 41: "iliac_vena_right", 42: "humerus_left", 43: "humerus_right",
    44: "scapula_left", 45: "scapula_right", 46: "clavicula_left", 47: "clavicula_right",
    48: "femur_left", 49: "femur_right", 50: "hip_left", 51: "hip_right", 52: "spinal_cord",
    **_sided({
        "gluteus_maximus": (53, 54), "gluteus_medius": (55, 56), "gluteus_minimus": (57, 58),
        "autochthon": (59, 60), "iliopsoas": (61, 62),
    }),
    63: "sternum", 64: "costal_cartilages", 65: "subcutaneous_fat", 66: "muscle", 67: "inner_fat",
    68: "intervertebral_discs", 69: "vertebra_body", 70: "vertebra_posterior_elements",
    71: "spinal_channel", 72: "bone_other",
}
#: MuscleMap whole-body ids: region digit, structure, last digit 1 = left, 2 = right.
_MUSCLEMAP_TRUNK = {
    1101: "levator_scapulae", 1111: "semispinalis_cervicis_multifidus",
    1121: "semispinalis_capitis", 1131: "splenius_capitis", 1141: "sternocleidomastoid",
    1151: "longus_colli", 1161: "trapezius", 2101: "supraspinatus", 2111: "subscapularis",
    2121: "infraspinatus", 2141: "deltoid", 4101: "rhomboid", 5101: "multifidus",
    5111: "erector_spinae", 5121: "psoas_major", 5131: "quadratus_lumborum",
    5141: "latissimus_dorsi", 6101: "gluteus_minimus", 6111: "gluteus_medius",
    6121: "gluteus_maximus", 6131: "tensor_fascia_latae", 6141: "iliacus", 6151: "ilium",
    6171: "femur",
}
_MUSCLEMAP_HIP_ROTATORS = {  # added in v1.2
    6181: "piriformis", 6191: "pectineus", 6201: "obturator_internus",
    6211: "obturator_externus", 6221: "gemelli_quadratus_femoris",
}
_MUSCLEMAP_THIGH = {
    7101: "vastus_lateralis", 7111: "vastus_intermedius", 7121: "vastus_medialis",
    7131: "rectus_femoris", 7141: "sartorius", 7151: "gracilis", 7161: "semimembranosus",
    7171: "semitendinosus", 7181: "biceps_femoris_long_head", 7191: "biceps_femoris_short_head",
    7201: "adductor_magnus", 7211: "adductor_longus", 7221: "adductor_brevis",
}
_MUSCLEMAP_LEG_V1 = {  # v1.0-v1.3
    8101: "leg_anterior_compartment", 8111: "leg_deep_posterior_compartment",
    8121: "leg_lateral_compartment", 8131: "soleus", 8141: "gastrocnemius", 8151: "tibia",
    8161: "fibula",
}
_MUSCLEMAP_LEG_V14 = {  # v1.4 reassigns 8101-8221
    8101: "tibialis_anterior", 8111: "tibialis_posterior", 8121: "peroneus_longus",
    8131: "soleus", 8141: "medial_gastrocnemius", 8151: "lateral_gastrocnemius", 8161: "tibia",
    8171: "fibula", 8181: "flexor_hallucis_longus", 8191: "extensor_digitorum_hallucis_longus",
    8201: "flexor_digitorum_longus", 8211: "popliteus", 8221: "plantaris",
}


def _musclemap(*tables: dict[int, str]) -> dict[int, str]:
    bases = {i: b for t in tables for i, b in t.items()}
    return {**{i + k: f"{b}_{s}" for i, b in bases.items() for k, s in enumerate(SIDES)}, 6160: "sacrum"}


_MUSCLEMAP_V10 = _musclemap(_MUSCLEMAP_TRUNK, _MUSCLEMAP_THIGH, _MUSCLEMAP_LEG_V1)
_MUSCLEMAP_V12 = _musclemap(_MUSCLEMAP_TRUNK, _MUSCLEMAP_HIP_ROTATORS, _MUSCLEMAP_THIGH, _MUSCLEMAP_LEG_V1)
_MUSCLEMAP_V14 = _musclemap(
    _MUSCLEMAP_TRUNK, _MUSCLEMAP_HIP_ROTATORS, _MUSCLEMAP_THIGH, {7231: "patella"}, _MUSCLEMAP_LEG_V14
)

BUILTIN_PROFILES: dict[str, dict[int, str]] = {
    "mrsegmentator": _MRSEG,
    "mrsegmentator_bodycomp": _MRSEG_BODYCOMP,
    "totalsegmentator_mr": _TOTAL_MR,
    "totalsegmentator_mr_56": _TOTAL_MR_56,
    "totalsegmentator_tissue_types_mr": _TISSUE_TYPES_MR,
    "totalsegmentator_thigh_shoulder_mr": _THIGH_SHOULDER_MR,
    "totalvibeseg": _TOTALVIBE,
    "musclemap_v1.0": _MUSCLEMAP_V10,
    "musclemap_v1.2": _MUSCLEMAP_V12,
    "musclemap_v1.4": _MUSCLEMAP_V14,
}

_TS_MAP = "wasserth/TotalSegmentator totalsegmentator/map_to_binary.py"
#: name -> (tool, releases covered, table the ids were read from).
PROFILE_INFO: dict[str, tuple[str, str, str]] = {
    "mrsegmentator": (
        "MRSegmentator", "1.0.0-2.x (base model, 40 classes)",
        "hhaentze/MRSegmentator README 'Class details' and src/dicom_helper/class_codes.py",
    ),
    "mrsegmentator_bodycomp": (
        "MRSegmentator", "2.0.0+ --body_comp model (10 classes, MRI only)",
        "hhaentze/MRSegmentator README v2.0.0 'Body Composition (Exclusively MRI)'",
    ),
    "totalsegmentator_mr": (
        "TotalSegmentator", "2.5.0+ task total_mr (50 classes)",
        f"{_TS_MAP} class_map['total_mr'] (commit 0275d30); issues #424, #479, #497",
    ),
    "totalsegmentator_mr_56": (
        "TotalSegmentator", "2.2.1-2.4.0 task total_mr (56 classes)",
        "the 56-class total_mr table of v2.4.0 (README 'Class details' of v2.4.0, issue #497); "
        "read from a verbatim copy of that table, not from the v2.4.0 file itself",
    ),
    "totalsegmentator_tissue_types_mr": (
        "TotalSegmentator", "2.5.0+ task tissue_types_mr (3 classes; licensed weights)",
        f"{_TS_MAP} class_map['tissue_types_mr'] (commit 0275d30)",
    ),
    "totalsegmentator_thigh_shoulder_mr": (
        "TotalSegmentator", "2.5.0+ task thigh_shoulder_muscles_mr (18 classes; licensed weights)",
        f"{_TS_MAP} class_map['thigh_shoulder_muscles_mr'] (commit 0275d30)",
    ),
    "totalvibeseg": (
        "TotalVibeSegmentator", "README since commit f01ce67 (2024-06; id 65 subcutaneous_fat)",
        "robert-graf/TotalVibeSegmentator README 'Label overview' (commit 8273189)",
    ),
    "musclemap_v1.0": (
        "MuscleMap", "whole-body model v1.0-v1.1 (89 labels)",
        "MuscleMap/MuscleMap scripts/models/wholebody/contrast_agnostic_wholebody_model.json "
        "(version 1.0: commit 1ddede3; version 1.1: build/lib copy, commit d178649)",
    ),
    "musclemap_v1.2": (
        "MuscleMap", "whole-body model v1.2-v1.3 (99 labels: + 6181-6222 hip rotators)",
        "MuscleMap/MuscleMap contrast_agnostic_wholebody_model.json version 1.2 (commit 2a38b07); "
        "v1.3 label space of the neurodesk MuscleMap web app model registry (same 99 labels)",
    ),
    "musclemap_v1.4": (
        "MuscleMap", "whole-body model v1.4 (113 labels: + 7231 patella, 8101-8222 reassigned)",
        "label space 'musclemap-wholebody-v1.4' of the neurodesk MuscleMap web app model registry "
        "(Zenodo 10.5281/zenodo.21929873, upstream revision 6e1e1eb)",
    ),
}
PROFILE_ALIASES = {
    "total_mr": "totalsegmentator_mr", "totalvibesegmentator": "totalvibeseg",
    "musclemap": "musclemap_v1.4",
}

# --- vertebra label profiles (vertebral levels, myocomp.imaging.levels) ---------------------
# TotalSegmentator >= 2.5 MR task ``vertebrae_mr`` (totalsegmentator/map_to_binary.py,
# class_map["vertebrae_mr"]): 1 sacrum, 2-6 L5-L1, 7-18 T12-T1, 19-25 C7-C1.
_VERTEBRAE_MR_CAUDAL_TO_CRANIAL = (
    *(f"L{i}" for i in range(5, 0, -1)), *(f"T{i}" for i in range(12, 0, -1)),
    *(f"C{i}" for i in range(7, 0, -1)),
)
BUILTIN_PROFILES["totalsegmentator_vertebrae_mr"] = {
    1: "sacrum", **{i: f"vertebrae_{v}" for i, v in enumerate(_VERTEBRAE_MR_CAUDAL_TO_CRANIAL, start=2)}
}
PROFILE_INFO["totalsegmentator_vertebrae_mr"] = (
    "TotalSegmentator", "2.5.0+ task vertebrae_mr (25 classes; vertebra map for levels, no muscles)",
    f"{_TS_MAP} class_map['vertebrae_mr'] (commit 0275d30)",
)
PROFILE_ALIASES["vertebrae_mr"] = "totalsegmentator_vertebrae_mr"

#: ``--profile auto``: choose the built-in profile whose id set and anatomy fit the label map.
AUTO_PROFILE = "auto"


def builtin_profiles() -> list[LabelProfile]:
    """Every built-in profile, in the order of :data:`BUILTIN_PROFILES`."""
    return [get_profile(name) for name in BUILTIN_PROFILES]


def get_profile(name_or_path: str | Path) -> LabelProfile:
    """A built-in profile by name, or one read from an nnU-Net ``dataset.json`` / a user JSON file.

    A user JSON file maps ids to names, ``{"1": "autochthon_left", ...}`` (optionally under a
    ``"labels"`` key); a ``dataset.json`` maps names to ids (nnU-Net v2 convention).
    """
    key = str(name_or_path)
    if key.lower() == AUTO_PROFILE:
        raise LabelError("profile 'auto' is chosen per label map (load_labels / labelmap_from_array), "
                         "not a fixed table")
    key = PROFILE_ALIASES.get(key.lower(), key.lower()) if not key.endswith(".json") else key
    if key in BUILTIN_PROFILES:
        tool, versions, source = PROFILE_INFO[key]
        return LabelProfile(key, dict(BUILTIN_PROFILES[key]), tool, versions, source)
    path = Path(str(name_or_path))
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise LabelError("label profile file not found", source=path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LabelError(f"label profile is not valid JSON ({exc})", source=path) from exc
        if isinstance(content, dict) and "channel_names" in content:
            return profile_from_dataset_json(content, name=str(path))
        if isinstance(content, dict) and isinstance(content.get("labels"), list):
            return profile_from_label_list(content["labels"], name=str(path))
        return profile_from_mapping(content.get("labels", content) if isinstance(content, dict) else content, name=str(path))
    known = ", ".join([*BUILTIN_PROFILES, *PROFILE_ALIASES])
    raise LabelError(f"unknown label profile {str(name_or_path)!r}; use one of {known}, or a .json mapping")


def profile_from_mapping(mapping: Any, name: str = "user") -> LabelProfile:
    """Profile from ``{id: name}`` (ids as ints or strings); names are canonicalised."""
    if not isinstance(mapping, dict) or not mapping:
        raise LabelError("label mapping must be a non-empty JSON object {id: name}", source=name)
    ids: dict[int, str] = {}
    for k, v in mapping.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise LabelError(f"label id {k!r} is not an integer", source=name) from None
        if i == 0:
            continue
        if not isinstance(v, str):
            raise LabelError(f"label {i} name must be a string, got {v!r}", source=name)
        ids[i] = canonical_name(v)
    return LabelProfile(name, ids)


def profile_from_label_list(labels: list, name: str = "user") -> LabelProfile:
    """Profile from a MuscleMap model JSON ``labels`` list: ``{"value", "anatomy"|"muscle", "side"}``."""
    mapping: dict[int, str] = {}
    for entry in labels:
        if not isinstance(entry, dict) or "value" not in entry:
            raise LabelError(f"label entry {entry!r} has no 'value'", source=name)
        structure = entry.get("anatomy", entry.get("muscle"))
        if not isinstance(structure, str):
            raise LabelError(f"label {entry['value']!r} has no 'anatomy' or 'muscle' name", source=name)
        side = str(entry.get("side", ""))
        mapping[entry["value"]] = f"{structure} {side}" if side in SIDES else structure
    return profile_from_mapping(mapping, name=name)


def profile_from_dataset_json(dataset: str | Path | dict, name: str | None = None) -> LabelProfile:
    """Profile from an nnU-Net v2 ``dataset.json`` (``labels``: name -> id; region labels refused)."""
    if not isinstance(dataset, dict):
        path = Path(dataset)
        name = name or str(path)
        try:
            dataset = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LabelError(f"cannot read dataset.json ({exc})", source=path) from exc
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    if not isinstance(labels, dict):
        raise LabelError("dataset.json has no 'labels' object", source=name)
    ids: dict[int, str] = {}
    for label_name, value in labels.items():
        if isinstance(value, list | tuple):
            raise LabelError(f"region-based label {label_name!r} is not supported", source=name)
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise LabelError(f"label {label_name!r} has id {value!r}; ids must be whole numbers >= 0",
                             source=name)
        if int(value) != 0:
            ids[int(value)] = canonical_name(label_name)
    return LabelProfile(name or "dataset.json", ids)


@dataclass(frozen=True, eq=False)
class LabelMap:
    """An integer label volume on a Dixon grid (canonical RAS+ orientation) with its profile."""

    data: np.ndarray
    affine: np.ndarray
    profile: LabelProfile
    anatomy: dict | None = None  # how the profile was checked or chosen (provenance)

    def present_ids(self) -> np.ndarray:
        return present_label_ids(self.data)


def present_label_ids(data: np.ndarray, chunk: int = 1 << 23) -> np.ndarray:
    """Sorted non-zero label ids present in ``data`` (exact; linear in the voxel count).

    Labels come in runs along the memory order, and every run starts at the first voxel of a
    ``chunk`` or where the value changes: only those voxels are looked up (~6x faster than
    marking every voxel, on a whole-body map).
    """
    lo, hi = int(data.min(initial=0)), int(data.max(initial=0))
    if lo < 0 or hi >= 2**20:
        present = np.unique(data)
        return present[present != 0]
    flat = data.ravel(order="K")  # "K": no copy of Fortran-ordered NIfTI data
    seen = np.zeros(hi + 1, dtype=bool)
    for start in range(0, flat.size, chunk):
        piece = flat[start : start + chunk]
        seen[piece[0]] = True
        seen[piece[1:][piece[1:] != piece[:-1]]] = True
    seen[0] = False
    return np.flatnonzero(seen)


def save_labels(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write an integer label volume as NIfTI (uint8/int16 as the ids need), atomically."""
    from myocomp.io import save_nifti

    data = np.asarray(data)
    dtype = np.uint8 if data.min(initial=0) >= 0 and data.max(initial=0) < 256 else np.int16
    return save_nifti(data.astype(dtype), affine, path)
