"""Launch form values -> the CLI's arguments. The form holds no defaults of its own: it
shows the preset's resolved values (preset_values) and sends only what the user changed,
as the dotted key=value overrides the CLI takes."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError, build_config, echo, parse_override

# Form field -> config key: the settings most runs change.
COMMON_FIELDS = {
    "iterations": "train.iterations",
    "lr": "train.lr",
    "lora_rank": "model.lora_rank",
    "prompts_per_iter": "batch.prompts_per_iter",
    "rollout_cap": "batch.rollout_cap",
    "eval_every": "output.eval_every",
    "checkpoint_every": "output.checkpoint_every",
    "seed": "train.seed",
}
# Set by the app (the runs folder and the Name field), not by free-form overrides.
APP_OWNED_KEYS = ("output.root", "output.name")


def get_key(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def preset_values(preset: str) -> dict:
    """What the form shows for a preset: its resolved value of every common field."""
    cfg = build_config(preset)
    values = {name: get_key(cfg, key) for name, key in COMMON_FIELDS.items()}
    values["algorithm"] = cfg.algorithm
    values["reward_weights"] = dict(cfg.reward.weights)
    values["prompts_source"] = cfg.prompts.source
    return values


def algorithm_choices() -> list[tuple[str, str]]:
    """(label, value) of every algorithm the config accepts, after "as preset"."""
    import typing

    from ..algorithms import ALGORITHM_NAMES

    names = typing.get_args(typing.get_type_hints(Config)["algorithm"])
    return [("as preset", "")] + [(f"{ALGORITHM_NAMES.get(n, n)} ({n})", n) for n in names]


def builtin_prompt_sets() -> list[str]:
    try:
        from ..rewards.prompt_sets import available_prompt_sets
    except ImportError:
        return ["shapes"]
    return ["shapes", *[s for s in available_prompt_sets() if s != "shapes"]]


def format_value(value) -> str:
    """A value as the CLI reads it back (YAML scalars; 20.0 stays a float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class LaunchForm:
    """The launch form as plain values (None or "" = as the preset)."""

    preset: str
    algorithm: str = ""
    name: str = ""
    reward: str = ""
    prompts: str = ""
    prompts_file: str | None = None
    common: dict = field(default_factory=dict)
    extra: str = ""

    def overrides(self, uploads_dir: Path) -> list[str]:
        """The dotted overrides this form means, in a stable order."""
        defaults = preset_values(self.preset)
        out = []
        for name, key in COMMON_FIELDS.items():
            value = self.common.get(name)
            if value is None or value == "":
                continue
            if isinstance(defaults[name], int) and not isinstance(defaults[name], bool):
                if isinstance(value, float):
                    if not value.is_integer():
                        raise ConfigError(f"{key}: expected int, got {value!r}")
                    value = int(value)
            if value != defaults[name]:
                out.append(f"{key}={format_value(value)}")
        if self.algorithm and self.algorithm != defaults["algorithm"]:
            out.append(f"algorithm={self.algorithm}")
        if self.reward and defaults["reward_weights"] != {self.reward: 1.0}:
            out.append(f"reward.weights={{{self.reward}: 1.0}}")
        source = stored_prompt_file(self.prompts_file, uploads_dir) if self.prompts_file else self.prompts
        if source and source != defaults["prompts_source"]:
            out.append(f"prompts.source={source}")
        out += parse_extra(self.extra)
        return out


def parse_extra(text: str) -> list[str]:
    """Free-form overrides, one key=value per line ('#' starts a comment)."""
    out = []
    for raw in (text or "").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-") or "=" not in line:
            raise ConfigError(f"override {echo(line)} must look like section.key=value (e.g. train.lr=1e-4)")
        owned = app_owned_key(line)
        if owned:
            raise ConfigError(f"override {echo(line)}: the app sets {owned}; "
                              "use the run name field (runs live in the app's runs folder)")
        out.append(line)
    return out


def app_owned_key(override: str) -> str | None:
    """The app-owned key (output.root, output.name) an override sets, however it is written:
    output.root=/x, output={root: /x}, output={"name": y}. None when it sets neither."""
    try:
        path, value = parse_override(override)
    except ConfigError:
        return None  # not an override at all: the caller's own check rejects it
    for owned in APP_OWNED_KEYS:
        parts = owned.split(".")
        node, rest = value, parts[len(path):]
        if path != parts[:len(path)]:
            continue
        while rest and isinstance(node, dict) and rest[0] in node:
            node, rest = node[rest[0]], rest[1:]
        if not rest:
            return owned
    return None


def stored_prompt_file(upload: str, uploads_dir: Path) -> str:
    """Copy an uploaded prompt file into the runs folder (named by its content), so the
    run's config.yaml points at a file that outlives the upload and is re-runnable."""
    src = Path(upload)
    if src.suffix.lower() != ".txt":
        raise ConfigError(f"prompt file {src.name!r} must be a .txt file with one prompt per line")
    data = src.read_bytes()
    uploads_dir.mkdir(parents=True, exist_ok=True)
    dest = uploads_dir / f"prompts-{hashlib.sha256(data).hexdigest()[:12]}.txt"
    if not dest.exists():
        shutil.copyfile(src, dest)
    return str(dest)
