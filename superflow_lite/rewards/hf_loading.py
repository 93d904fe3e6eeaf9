"""Loading Hugging Face models for rewards: dtypes, devices and offline-friendly errors.

Every model reward loads through here so that a missing download reads the same way
everywhere: which repo, what to run to fetch it while online, and how to point the
reward at a local copy instead.
"""
from __future__ import annotations

from typing import Any, Callable

from .base import RewardUnavailable

_DTYPES = ("auto", "float32", "float16", "bfloat16")


def check_dtype(dtype: str, reward: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"reward.options.{reward}.dtype: {dtype!r} is not one of {', '.join(_DTYPES)}")
    return dtype


def torch_dtype(dtype: str, device: str) -> Any:
    """'auto' = float16 on CUDA (half the memory of float32, scores agree to ~1e-3) and
    float32 elsewhere (CPU half-precision matmuls are slow or missing)."""
    import torch

    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def missing_model_message(reward: str, repo: str, option: str, err: BaseException) -> str:
    return (
        f"the {reward!r} reward could not load {repo!r} ({type(err).__name__}: {err}). "
        f"Hub models are fetched on first use, which needs network access: download it once "
        f"where there is network (`hf download {repo}`, huggingface_hub's CLI), then run with "
        f"HF_HUB_OFFLINE=1 and the same cache, or set reward.options.{reward}.{option} to the "
        f"local copy (a folder from save_pretrained / the downloaded file)."
    )


def load_pretrained(
    loader: Callable[..., Any], repo: str, *, reward: str, option: str, **kwargs: Any
) -> Any:
    """loader(repo, **kwargs) (e.g. CLIPModel.from_pretrained), with RewardUnavailable on failure.

    Only I/O and lookup errors are translated; a broken config or shape mismatch is a
    real bug and propagates unchanged.
    """
    try:
        return loader(repo, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise RewardUnavailable(missing_model_message(reward, repo, option, err)) from err


def require_transformers(reward: str) -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise RewardUnavailable(
            f"the {reward!r} reward needs transformers and torch: pip install -e ."
        ) from err
