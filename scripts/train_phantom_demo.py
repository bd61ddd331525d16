"""Train the `phantom-demo` nnU-Net v2 model shipped with myocomp (CPU, a few minutes).

VALID FOR PHANTOMS ONLY: the model has only ever seen ``myocomp.synth.phantom`` volumes.
It exists so that the demo and the tests run the real nnU-Net inference path end to end
(phantom -> ``myocomp segment`` -> ``myocomp quantify``).

What it writes (default ``src/myocomp/segment/phantom-demo.zip`` + ``phantom-demo.json``):
an nnU-Net v2 results folder ``nnUNetTrainer__nnUNetPlans__3d_fullres/`` with

* ``dataset.json``: channels water/fat, labels with canonical names
  (autochthon_left/right, iliopsoas_left/right, spine);
* ``plans.json``: written here by hand, a small ``3d_fullres`` configuration (target spacing
  4 x 2 x 2 mm in nnU-Net's (z, y, x) order, z-score normalisation per channel, a 4-stage
  PlainConvUNet from dynamic_network_architectures with 8..64 features), reader
  ``NibabelIOWithReorient`` (the network sees RAS-reoriented arrays transposed to (k, j, i));
* ``fold_0/checkpoint_final.pth``: the keys nnUNetPredictor reads (network_weights,
  init_args.configuration, trainer_name, inference_allowed_mirroring_axes = None because the
  labels are sided), plus the training log;
* ``README.md``.

Training: phantoms with seeds 1000..1000+N (tests use seeds < 1000, so they are held out),
random voxel sizes, SNRs and stored orientations, plus random rotations of up to 20 degrees
(oblique acquisitions), preprocessed by nnU-Net's own DefaultPreprocessor exactly as at
inference, and a compact PyTorch loop (AdamW, one-cycle LR, cross-entropy + soft Dice) on 1-2
threads. Muscle voxels that look like fat (intramuscular streaks, FF >= 0.4) get 10x weight in
the cross-entropy, because missing them biases InterMAT.
nnU-Net's trainer is not used (it needs a GPU-sized budget and, here, torchvision).

Usage::

    python scripts/train_phantom_demo.py [--n-train 24] [--iterations 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "myocomp" / "segment" / "phantom-demo.zip"
FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"

# phantom ids (MRSegmentator's) -> demo model ids
PHANTOM_TO_MODEL = {31: 1, 32: 2, 33: 3, 34: 4, 25: 5}
LABELS = {
    "background": 0,
    "autochthon_left": 1,
    "autochthon_right": 2,
    "iliopsoas_left": 3,
    "iliopsoas_right": 4,
    "spine": 5,
}
TARGET_SPACING = [4.0, 2.0, 2.0]  # nnU-Net order (z, y, x) of a RAS array
PATCH = [16, 128, 168]  # inference patch (z, y, x): a whole 2 mm axial slab of a phantom
TRAIN_PATCH = [2, 128, 168]  # training crop: the same in-plane field of view, 2 slices
VOXEL_SIZES = [(2.0, 2.0, 4.0), (1.8, 1.8, 3.6), (2.2, 2.2, 4.4), (1.6, 1.6, 4.0), (2.5, 2.5, 5.0)]
ORIENTATIONS = ["RAS", "LPS", "LAS", "RPI", "PLS", "SAR"]
FAT_TAG = 10  # label offset marking fat-looking muscle voxels during training only
FAT_WEIGHT = 10.0  # their weight in the cross-entropy


def dataset_json() -> dict:
    return {
        "channel_names": {"0": "water", "1": "fat"},
        "labels": dict(LABELS),
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "name": "PhantomDemo",
        "description": "myocomp phantom demo model: valid for myocomp.synth phantoms only",
        "reference": "scripts/train_phantom_demo.py",
        "licence": "Apache-2.0",
    }


def plans_json(intensity_props: dict) -> dict:
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [8, 16, 32, 64],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            # in-plane (1x3x3) kernels only: cheap on CPU, and a phantom slice is recognisable
            # by itself; the receptive field spans about 120 mm in-plane (left/right context)
            "kernel_sizes": [[1, 3, 3], [1, 3, 3], [1, 3, 3], [1, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
            "n_conv_per_stage": [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [1, 1, 1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = "resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset900_PhantomDemo",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": TARGET_SPACING,
        "original_median_shape_after_transp": [16, 128, 161],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": PATCH,
                "median_image_size_in_voxels": [16, 128, 161],
                "spacing": TARGET_SPACING,
                "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
                "use_mask_for_norm": [False, False],
                "resampling_fn_data": resample,
                "resampling_fn_seg": resample,
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": resample,
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": arch,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "hand-written by scripts/train_phantom_demo.py",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity_props,
    }


def rotation_affine(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation (4x4, about the origin) of at most ``max_deg`` degrees."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    out = np.eye(4)
    out[:3, :3] = rot
    return out


def make_case(seed: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One training case: (2, z, y, x) float32 image, (1, z, y, x) labels, spacing (z, y, x)."""
    from myocomp.imaging.dixon import canonical
    from myocomp.synth.phantom import make_phantom

    vs = VOXEL_SIZES[rng.integers(len(VOXEL_SIZES))]
    orient = ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
    ph = make_phantom(
        seed,
        voxel_size_mm=vs,
        snr=float(rng.uniform(20, 60)),
        orientation=orient,
        n_slices=int(rng.choice([8, 12, 16])),
        bmi=float(rng.uniform(19, 34)),
        infiltration=float(rng.uniform(0.05, 0.25)),
        intermat=float(rng.uniform(0.02, 0.12)),
    )
    affine = np.asarray(ph.affine, float)
    water, fat, labels = (np.asarray(a) for a in (ph.water, ph.fat, ph.labels))
    if rng.random() < 0.6:  # oblique: resample the stored grid through a small rotation
        from scipy.ndimage import affine_transform

        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        centre = (np.array(water.shape) - 1) / 2
        rot = rotation_affine(rng, 20.0)[:3, :3]
        # voxel -> mm (diag zooms), rotate, back to voxels, about the centre
        m = np.diag(1 / zooms) @ rot @ np.diag(zooms)
        offset = centre - m @ centre
        water = affine_transform(water, m, offset, order=1, mode="constant")
        fat = affine_transform(fat, m, offset, order=1, mode="constant")
        labels = affine_transform(labels, m, offset, order=0, mode="constant")
    water, can = canonical(water.astype(np.float32), affine)
    fat, _ = canonical(fat.astype(np.float32), affine)
    labels, _ = canonical(labels.astype(np.int16), affine)
    mapped = np.zeros(labels.shape, np.int16)
    for src, dst in PHANTOM_TO_MODEL.items():
        mapped[labels == src] = dst
    # muscle voxels that look like fat (intramuscular streaks) are tagged +FAT_TAG so that the
    # loss can weight them: missing them would bias InterMAT, the study's key metric
    ff = fat / np.maximum(water + fat, 1e-6)
    mapped[(mapped >= 1) & (mapped <= 4) & (ff >= 0.4)] += FAT_TAG
    zooms = np.linalg.norm(can[:3, :3], axis=0)
    data = np.stack([water.transpose(2, 1, 0), fat.transpose(2, 1, 0)]).astype(np.float32)
    return data, mapped.transpose(2, 1, 0)[None], [float(z) for z in zooms[::-1]]


def preprocess(cases, plans: dict, dsj: dict):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    pre = DefaultPreprocessor(verbose=False)
    out = []
    for data, seg, spacing in cases:
        d, s, _ = pre.run_case_npy(data.copy(), seg.copy(), {"spacing": spacing}, pm, cm, dsj)
        s = np.where(s < 0, 0, s)  # outside the nonzero crop: background
        out.append((d.astype(np.float32), s.astype(np.int64)))  # still carries FAT_TAG
    return out


def random_patch(rng, data, seg, patch):
    """Random crop (zero/background padded) of size ``patch`` from (c, z, y, x) arrays."""
    c = data.shape[0]
    shape = np.array(data.shape[1:])
    pad = np.maximum(np.array(patch) - shape, 0)
    if pad.any():
        lo = [int(rng.integers(0, p + 1)) for p in pad]
        widths = [(0, 0)] + [(a, p - a) for a, p in zip(lo, pad, strict=True)]
        data = np.pad(data, widths)
        seg = np.pad(seg, widths)
        shape = np.array(data.shape[1:])
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
    sl = tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
    d = data[(slice(0, c), *sl)]
    s = seg[(slice(0, 1), *sl)]
    # intensity augmentation per channel (the input is already z-scored)
    d = d * rng.uniform(0.85, 1.15, size=(c, 1, 1, 1)) + rng.uniform(-0.1, 0.1, size=(c, 1, 1, 1))
    return d.astype(np.float32), s


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n: int) -> list[float]:
    out = []
    for k in range(1, n):
        a, b = pred == k, truth == k
        denom = a.sum() + b.sum()
        out.append(float(2 * (a & b).sum() / denom) if denom else float("nan"))
    return out


def train(args) -> None:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    dsj = dataset_json()
    t0 = time.time()
    seeds = list(range(1000, 1000 + args.n_train))
    raw = [make_case(s, rng) for s in seeds]
    stats = {}
    for ch in range(2):
        vals = np.concatenate([d[ch][s[0] > 0].ravel() for d, s, _ in raw])
        stats[str(ch)] = {
            "max": float(vals.max()),
            "mean": float(vals.mean()),
            "median": float(np.median(vals)),
            "min": float(vals.min()),
            "percentile_00_5": float(np.percentile(vals, 0.5)),
            "percentile_99_5": float(np.percentile(vals, 99.5)),
            "std": float(vals.std()),
        }
    plans = plans_json(stats)
    cases = preprocess(raw, plans, dsj)
    print(f"{len(cases)} training cases ready in {time.time() - t0:.0f} s")

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        2,
        len(LABELS),
        allow_init=True,
        deep_supervision=False,
    )
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.iterations, pct_start=0.1
    )
    n_cls = len(LABELS)
    log = []
    net.train()
    for it in range(args.iterations):
        batch = [
            random_patch(rng, *cases[int(rng.integers(len(cases)))], TRAIN_PATCH)
            for _ in range(args.batch)
        ]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        tagged = torch.from_numpy(np.stack([b[1][0] for b in batch]))
        weight = torch.where(tagged >= FAT_TAG, FAT_WEIGHT, 1.0)
        y = torch.where(tagged >= FAT_TAG, tagged - FAT_TAG, tagged)
        logits = net(x)
        probs = torch.softmax(logits, 1)
        onehot = torch.nn.functional.one_hot(y, n_cls).permute(0, 4, 1, 2, 3).float()
        inter = (probs * onehot).sum((0, 2, 3, 4))
        denom = probs.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4))
        dice = (2 * inter + 1e-5) / (denom + 1e-5)
        ce = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * weight).sum()
        loss = ce / weight.sum() + (1 - dice[1:].mean())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        sched.step()
        if it % 25 == 0 or it == args.iterations - 1:
            entry = {
                "iteration": it,
                "loss": round(float(loss.detach()), 4),
                "dice": [round(float(v), 3) for v in dice[1:].detach()],
                "seconds": round(time.time() - t0),
            }
            log.append(entry)
            print(entry, flush=True)
    net.eval()

    # validation on held-out seeds through the same preprocessing
    val_raw = [make_case(s, rng) for s in range(2000, 2000 + args.n_val)]
    val = preprocess(val_raw, plans, dsj)
    val_dice = []
    with torch.no_grad():
        for d, s in val:
            shape = np.array(d.shape[1:])
            target = (np.ceil(shape / [1, 8, 8]) * [1, 8, 8]).astype(int)
            widths = [(0, 0)] + [(0, int(t - n)) for t, n in zip(target, shape, strict=True)]
            pred = net(torch.from_numpy(np.pad(d, widths))[None]).argmax(1)[0].numpy()
            pred = pred[: shape[0], : shape[1], : shape[2]]
            val_dice.append(
                dice_per_class(pred, np.where(s[0] >= FAT_TAG, s[0] - FAT_TAG, s[0]), n_cls)
            )
    val_mean = np.nanmean(np.array(val_dice), axis=0)
    print(
        "validation Dice per label:",
        dict(zip(list(LABELS)[1:], [round(float(v), 3) for v in val_mean], strict=True)),
    )

    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {"log": log},
        "_best_ema": None,
        "current_epoch": args.iterations,
        "init_args": {
            "plans": copy.deepcopy(plans),
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dsj,
            "device": "cpu",
        },
        "trainer_name": "nnUNetTrainer",
        # None: no test-time mirroring (mirroring left-right would swap the sided labels)
        "inference_allowed_mirroring_axes": None,
    }
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    training_log = {
        "train_seeds": seeds,
        "validation_seeds": list(range(2000, 2000 + args.n_val)),
        "iterations": args.iterations,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "validation_dice": dict(
            zip(list(LABELS)[1:], [round(float(v), 4) for v in val_mean], strict=True)
        ),
        "seconds": round(time.time() - t0),
        "torch": torch.__version__,
    }
    readme = README.format(
        dice=json.dumps(training_log["validation_dice"]), n=args.n_train, it=args.iterations
    )
    files = {
        f"{FOLDER}/dataset.json": json.dumps(dsj, indent=2).encode(),
        f"{FOLDER}/plans.json": json.dumps(plans, indent=2).encode(),
        f"{FOLDER}/README.md": readme.encode(),
        f"{FOLDER}/fold_0/checkpoint_final.pth": buf.getvalue(),
        f"{FOLDER}/fold_0/training_log.json": json.dumps(training_log, indent=2).encode(),
    }
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload)
    tmp.replace(out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    sidecar = out.with_suffix(".json")
    sidecar.write_text(
        json.dumps(
            {
                "archive": out.name,
                "sha256": sha,
                "validation_dice": training_log["validation_dice"],
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha}) and {sidecar.name} "
        f"in {time.time() - t0:.0f} s"
    )


README = """# phantom-demo (myocomp)

A tiny nnU-Net v2 model (4-stage PlainConvUNet, 8-64 features) trained by
`scripts/train_phantom_demo.py` on {n} `myocomp.synth.phantom` volumes ({it} iterations, CPU).

**Valid for myocomp phantoms only.** It has never seen a real image; its output on real MRI is
meaningless. It exists so that the demo and the tests run the real nnU-Net inference path.

Inputs: channel 0 water, channel 1 fat (Dixon), RAS-reoriented (reader NibabelIOWithReorient).
Labels: 1 autochthon_left, 2 autochthon_right, 3 iliopsoas_left, 4 iliopsoas_right, 5 spine.
No test-time mirroring (labels are sided). Validation Dice on held-out phantoms: {dice}.
Licence: Apache-2.0 (as myocomp).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
