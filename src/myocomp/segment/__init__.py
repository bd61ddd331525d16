"""Segmentation backends: nnU-Net v2 results folders, the model registry and model fetching.

Heavy libraries (torch, nnunetv2) are imported only when a model is run.
"""

from myocomp.segment.models import (
    MODELS,
    FetchResult,
    ModelFetchError,
    ModelInfo,
    cache_dir,
    fetch_model,
    list_models,
    resolve_model,
)
from myocomp.segment.nnunet import (
    ModelSpec,
    channel_arrays,
    clear_predictors,
    get_predictor,
    load_model_spec,
    segment_arrays,
    segment_dixon,
)

__all__ = [
    "MODELS",
    "FetchResult",
    "ModelFetchError",
    "ModelInfo",
    "ModelSpec",
    "cache_dir",
    "channel_arrays",
    "clear_predictors",
    "fetch_model",
    "get_predictor",
    "list_models",
    "load_model_spec",
    "resolve_model",
    "segment_arrays",
    "segment_dixon",
]
