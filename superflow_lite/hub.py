"""Whether a model the run will load is there to load, asked before anything is created.

A Hugging Face model is available when it is a local folder or file, when its files are in
the Hugging Face cache, or when the hub is reachable and has them (it then downloads on
first use). Everything else is a `Missing`, and the launch gate turns all of them into one
message with the command that fetches them (`missing_message`).

Nothing here downloads weights: a cache lookup, then at most one metadata request per file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Files that show a transformers model's weights are present (one of them is enough).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("preprocessor_config.json",)
PIPELINE_FILES = ("model_index.json",)


@dataclass(frozen=True)
class Needed:
    """One model a run loads: `repo` (hub id or local path), `files` (any one of them shows
    it is there), and `setting` (the config key that points at a local copy instead)."""

    repo: str
    files: tuple[str, ...]
    setting: str
    revision: str | None = None


@dataclass(frozen=True)
class Missing:
    needed: Needed
    why: str  # "not in the Hugging Face cache and HF_HUB_OFFLINE is set", ...


def looks_like_path(name: str) -> bool:
    """A local path, not a hub id ('org/name'): hub ids have at most one slash and never
    start with '/', '.' or '~'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def in_cache(needed: Needed) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(needed.repo, f, revision=needed.revision), str)
               for f in needed.files)


def on_hub(needed: Needed) -> str | None:
    """None when the hub has one of the model's files; else why not (unreachable, gated, absent)."""
    from huggingface_hub import file_exists
    from huggingface_hub.errors import GatedRepoError

    try:
        if any(file_exists(needed.repo, f, revision=needed.revision) for f in needed.files):
            return None
        return "not on the Hugging Face hub (check the name)"
    except GatedRepoError:
        return "gated on the hub: accept its licence on its page, then `hf auth login`"
    except Exception as err:  # connection refused, DNS, timeout: all mean "cannot download it now"
        return f"not in the Hugging Face cache, and the hub cannot be reached ({type(err).__name__})"


def find_missing(needed: Needed) -> Missing | None:
    """Is `needed` loadable on this machine now? Local paths must exist; hub ids must be
    cached, or be downloadable (online)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    if Path(needed.repo).expanduser().exists():
        return None
    if looks_like_path(needed.repo):
        return Missing(needed, "no such file or folder")
    try:
        cached = in_cache(needed)
    except HFValidationError:  # e.g. 'head.pth': neither a file here nor a hub id
        return Missing(needed, "no such file or folder, and not a hub id such as org/name")
    if cached:
        return None
    if constants.HF_HUB_OFFLINE:
        return Missing(needed, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    why = on_hub(needed)
    return Missing(needed, why) if why else None


def missing_message(missing: list[Missing]) -> str:
    """One line: what is missing and why, the command that fetches every hub model, and
    the settings that point at local copies instead."""
    by_why: dict[str, list[str]] = {}
    for m in missing:
        named = f"{m.needed.repo!r} ({m.needed.setting})"
        if named not in by_why.setdefault(m.why, []):
            by_why[m.why].append(named)
    what = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_why.items())
    hub = list(dict.fromkeys(m.needed.repo for m in missing if not looks_like_path(m.needed.repo)))
    fetch = (f"fetch {'them' if len(hub) > 1 else 'it'} into the Hugging Face cache this machine uses, "
             f"where there is network: `{' && '.join(f'hf download {r}' for r in hub)}`; "
             if hub else "")
    settings = ", ".join(dict.fromkeys(m.needed.setting for m in missing))
    return f"cannot load {what}. To fix: {fetch}or set {settings} to a local copy"
