"""The launch gate: every check bad input can fail, run before a run directory is created
or touched. A failure raises UsageError (or ConfigError) with one line naming what is
wrong and what to do; the CLI prints it and exits 2, having created and changed nothing.

    gate(args) = config (types, ranges, finite numbers, keys at every depth; YAML aliases
                 and lengths bounded)
               + the run folder (new: free and writable; resume: a run with a whole
                 config.yaml, idle, not finished unless its LoRA needs exporting, with a
                 checkpoint whose LoRA has the configured shape)
               + the machine (CUDA for the device, quantization and xformers), and the
                 model in the cache when offline
               + the rewards, built with their options (each type-checked) and a finite,
                 non-empty declared range, and the prompts, loaded and read by the reward
                 that will score them
               + the base model and every reward's models: local, in the Hugging Face
                 cache, or downloadable now (hub.py)
               + the LoRA targets, matched against the model's module names
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import (Config, ConfigError, apply_overrides, build_config, config_from_dict, echo, read_config_file,
                     shorten)
from .rundir import (CONFIG_FILE, DONE, LAUNCH_FILES, has_trained, intact_checkpoints, latest_checkpoint_iteration,
                     list_checkpoints, lora_needs_export, read_status, writer_alive)


class UsageError(Exception):
    """Bad input that is not a config value: paths, runs, machine, rewards, prompts."""



class MachineUnfit(UsageError):
    """The config is valid but this machine cannot run it (a GPU preset on a CPU): the app
    still shows its command and plan, to run elsewhere."""

@dataclass
class Launch:
    """What a checked invocation will do."""

    cfg: Config
    run_path: Path
    resume: bool
    resume_from: int | None = None  # the checkpoint's iteration (None: none yet, start from 0)
    export_only: bool = False  # every iteration is done: the resume only writes the missing LoRA


def resolve(args: argparse.Namespace) -> tuple[Config, Path]:
    """The config and the run directory this invocation means (config checks only)."""
    check_path_flags(args)
    if args.resume is not None:
        return resolve_resume(args)
    cfg = build_config(args.preset, args.config, args.overrides)
    # The name stays as given (empty: each run of the same config gets a fresh one, so a
    # printed or saved config runs twice without colliding); only the path carries it.
    name = cfg.output.name or f"{cfg.preset}-{cfg.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_path = Path(args.output) if args.output is not None else Path(cfg.output.root) / name
    return cfg, run_path


def check_path_flags(args: argparse.Namespace) -> None:
    """An empty path (--output '', a script's unset variable) is a mistake, not "no flag":
    read as absent it would put the run, or take its config, somewhere the user did not say."""
    for flag, what in (("output", "a folder for the run, or leave --output out for <output.root>/<output.name>"),
                       ("resume", "a run directory such as runs/<name>"),
                       ("config", "a YAML file, or leave --config out")):
        value = getattr(args, flag, None)
        if value is not None and not value.strip():
            raise UsageError(f"--{flag} is empty; give {what}")


def resolve_resume(args: argparse.Namespace) -> tuple[Config, Path]:
    run_path = Path(args.resume)
    where = f"--resume {args.resume}"
    if args.config is not None or args.preset != "auto" or args.output is not None:
        raise UsageError("--resume takes the run's own config.yaml; pass changes as key=value overrides instead")
    if not run_path.is_dir():
        raise UsageError(f"{where}: no such directory; give a run directory such as runs/<name>")
    if not (run_path / CONFIG_FILE).is_file():
        if has_trained(run_path):  # a run (status, checkpoints) whose config.yaml was deleted
            raise UsageError(f"{where}: its config.yaml is missing; restore it from a copy, or start a new run")
        raise UsageError(f"{where}: no config.yaml there; give a run directory such as runs/<name>")
    try:
        cfg = config_from_dict(read_run_config(run_path / CONFIG_FILE))
    except ConfigError as err:
        raise UsageError(f"{where}: its config.yaml is broken: {err}. Restore it, or start a new run") from None
    apply_overrides(cfg, args.overrides)
    return cfg, run_path


def read_run_config(path: Path) -> dict:
    """A run's config.yaml, which the trainer writes whole: every section must be there. An
    empty or cut file would otherwise resume the run with default settings in their place."""
    data = read_config_file(path, "the run's config")
    if not data:
        raise ConfigError("it is empty")
    missing = [f.name for f in dataclasses.fields(Config) if f.name not in data]
    if missing:
        raise ConfigError(f"it lacks {', '.join(missing)} (a run's config.yaml holds every section)")
    return data


# ---------------------------------------------------------------------- the run folder
def check_new_run(run_path: Path) -> None:
    if run_path.exists() and not run_path.is_dir():
        raise UsageError(f"{str(run_path)!r} is a file, not a run directory; choose another --output")
    if has_trained(run_path):
        raise UsageError(
            f"{str(run_path)!r} already holds a run; resume it with --resume {run_path} or choose another --output")
    if run_path.is_dir():
        foreign = [p.name for p in run_path.iterdir() if p.name not in LAUNCH_FILES]
        if foreign:
            raise UsageError(f"{str(run_path)!r} is a folder that is not a run and not empty (it holds "
                             f"{foreign[0]!r}); choose a new or empty folder with --output")
    ancestor = run_path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {str(run_path)!r}: {str(ancestor)!r} is not a writable folder; "
                         "choose another output.root or --output")


def check_resume(cfg: Config, run_path: Path, shapes: dict[str, tuple[int, ...]] | None) -> int | None:
    """The run is idle, not already finished at this length (unless its LoRA needs exporting),
    and its checkpoint fits the config. Returns the iteration it continues from (None: no
    checkpoint, from 0)."""
    where = f"--resume {run_path}"
    if writer_alive(run_path):
        pid = (read_status(run_path) or {}).get("pid")
        raise UsageError(f"{where}: the run is still training (pid {pid}); stop it first, or wait for it to end")
    if not os.access(run_path, os.W_OK | os.X_OK):
        raise UsageError(f"{where}: the run directory is not writable; fix its permissions")
    at = latest_checkpoint_iteration(run_path)
    if list_checkpoints(run_path) and at is None:
        raise UsageError(f"{where}: every checkpoint in it is damaged; there is nothing intact to resume from")
    status = read_status(run_path) or {}
    if at is not None and at >= cfg.train.iterations and not needs_export_only(cfg, run_path, at):
        state = "done" if status.get("state") == DONE else f"at iteration {at}"
        raise UsageError(f"{where}: the run is {state} ({at}/{cfg.train.iterations} iterations); "
                         "raise train.iterations to continue it")
    if at is not None:
        check_checkpoint_shapes(run_path, intact_checkpoints(run_path)[0], shapes, cfg)
    return at


def needs_export_only(cfg: Config, run_path: Path, at: int | None) -> bool:
    """Every iteration is done but the LoRA is not all there (a kill during the final export):
    a resume exports it from the last checkpoint, which holds the final weights."""
    return at is not None and at == cfg.train.iterations and lora_needs_export(run_path)


def check_checkpoint_shapes(run_path: Path, checkpoint: Path, shapes: dict[str, tuple[int, ...]] | None,
                            cfg: Config) -> None:
    """The checkpoint's LoRA tensors have exactly the names and shapes this config builds."""
    from .checkpoint import load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
        stored = {k: tuple(v.shape) for k, v in state["lora"].items()}
    except Exception as err:  # unreadable although its checksum matches: written by something else
        raise UsageError(f"--resume {run_path}: {checkpoint.name} does not load ({type(err).__name__}); "
                         "remove it to resume from the one before") from None
    rank = next((v[0] for k, v in stored.items() if "lora_A" in k), None)
    if shapes is not None and stored != shapes:
        raise UsageError(
            f"--resume {run_path}: its checkpoint holds a rank-{rank} LoRA on {len(stored) // 2} modules, but the "
            f"config asks for rank {cfg.model.lora_rank} on {len(shapes) // 2} (model.lora_rank, model.lora_targets "
            "or model.name_or_path changed); resume with the run's own values, or start a new run")
    if shapes is None and rank is not None and rank != cfg.model.lora_rank:
        raise UsageError(f"--resume {run_path}: its checkpoint holds a rank-{rank} LoRA, but model.lora_rank="
                         f"{cfg.model.lora_rank}; resume with model.lora_rank={rank}")


# ---------------------------------------------------------------------- the machine
def check_machine(cfg: Config) -> None:
    """CUDA where the config needs it, and the libraries its features need."""
    import torch

    from .models import ModelUnavailable, bitsandbytes_needs, require_bitsandbytes

    cuda = torch.cuda.is_available()
    if cfg.model.device == "cuda" and not cuda:
        raise UsageError("model.device=cuda but no CUDA GPU is visible; use model.device=cpu with --preset tiny")
    if cfg.model.device == "auto" and cfg.preset != "tiny" and not cuda:
        raise UsageError(f"preset {cfg.preset!r} targets a CUDA GPU and none is visible; on a CPU use --preset tiny "
                         "(the built-in shapes world)")
    if cfg.reward.device.startswith("cuda") and not cuda:
        raise UsageError(f"reward.device={cfg.reward.device} but no CUDA GPU is visible; use reward.device=cpu")
    on_gpu = cuda and cfg.model.device != "cpu"
    needs = bitsandbytes_needs(cfg.model) + (["train.optimizer=adamw8bit"] if cfg.train.optimizer == "adamw8bit" else [])
    for need in needs:
        if not on_gpu:
            raise UsageError(f"{need} needs a CUDA GPU (bitsandbytes' 8-bit and 4-bit kernels); on a CPU use "
                             "model.transformer_quant=none, model.text_encoder_3=resident and train.optimizer=adamw")
        try:
            require_bitsandbytes(need)
        except ModelUnavailable as err:
            raise UsageError(str(err)) from None
    if cfg.model.attention == "xformers":
        if not on_gpu:
            raise UsageError("model.attention=xformers needs a CUDA GPU; use model.attention=sdpa")
        if importlib.util.find_spec("xformers") is None:
            raise UsageError("model.attention=xformers but xformers is not installed: pip install -e '.[xformers]', "
                             "or use model.attention=sdpa")


def check_model_folder(cfg: Config) -> None:
    """A local folder given as the base model holds a diffusers pipeline."""
    name = cfg.model.name_or_path
    if Path(name).is_dir() and not (Path(name) / "model_index.json").is_file():
        raise UsageError(f"model.name_or_path {name!r} is a folder without a diffusers pipeline (no model_index.json); "
                         "SD3.5-Medium is gated: accept its licence at "
                         "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium, download it "
                         "(hf download stabilityai/stable-diffusion-3.5-medium --local-dir DIR) "
                         "and set model.name_or_path=DIR")


def base_model_needed(cfg: Config) -> list:
    from .hub import PIPELINE_FILES, Needed

    if cfg.model.name_or_path == "world":  # built in, nothing to fetch
        return []
    return [Needed(cfg.model.name_or_path, PIPELINE_FILES, "model.name_or_path", cfg.model.revision)]


def check_models(cfg: Config, reward) -> None:
    """The base model and every reward's models are loadable now: local, cached, or
    downloadable. All that are not go in one message, with the command that fetches them,
    so a run never waits for its step-0 evaluation to find a reward model missing."""
    from .hub import find_missing, missing_message

    check_model_folder(cfg)
    missing = [m for needed in base_model_needed(cfg) + reward.needed_models() if (m := find_missing(needed))]
    if missing:
        raise UsageError(missing_message(missing))


# ---------------------------------------------------------------------- rewards and prompts
def build_checked_reward(cfg: Config):
    """Build the reward as the trainer will, its options checked (nothing loaded yet)."""
    from .rewards.base import RewardUnavailable
    from .rewards.registry import build_reward

    for name in cfg.reward.options:
        if name not in cfg.reward.weights:
            raise UsageError(f"reward.options.{name}: {name!r} is not in reward.weights "
                             f"({', '.join(cfg.reward.weights)}); add it there or drop its options")
    try:
        return build_reward(cfg.reward.weights, cfg.reward.device, cfg.reward.options)
    except (ValueError, TypeError, RewardUnavailable) as err:
        raise UsageError(f"reward: {err}") from None


def check_prompts(cfg: Config, reward) -> None:
    """Load the prompts, ask the reward whether it can read each one, and check that the RL pool
    has the distinct prompts an iteration draws."""
    from .prompts import load_prompts

    prompt_set = load_prompts(cfg.prompts)
    for split, key in ((prompt_set.train, "prompts.source"), (prompt_set.test, "prompts.test_source")):
        problems = [(p, why) for p in split if (why := reward.prompt_problem(p))]
        if problems:
            prompt, why = problems[0]
            raise UsageError(
                f"{key}: the {reward.name!r} reward cannot score {len(problems)} of its {len(split)} prompts, "
                f"e.g. {echo(prompt)} ({shorten(why, 200)}); give prompts written for it, or another reward")
    distinct = len(set(prompt_set.train))
    if distinct < cfg.batch.prompts_per_iter:
        # Each iteration draws batch.prompts_per_iter different prompts; the sampler would refuse
        # at the first iteration, after the run folder exists.
        raise UsageError(f"prompts.source has {distinct} distinct prompt{'s' * (distinct != 1)}, fewer than "
                         f"batch.prompts_per_iter={cfg.batch.prompts_per_iter} drawn each iteration; "
                         f"set batch.prompts_per_iter={distinct} or add prompts")


# ---------------------------------------------------------------------- LoRA targets
@functools.lru_cache(maxsize=1)
def world_linears() -> dict[str, tuple[int, int]]:
    """The built-in world's Linear layers, from the model built on the meta device (no memory)."""
    import torch

    from .layouts import layout_of_module
    from .world.model import build_transformer

    with torch.device("meta"):
        layout = layout_of_module(build_transformer())
    return {s.name: (s.fan_in, s.fan_out) for s in layout.linears}


def transformer_linears(cfg: Config) -> dict[str, tuple[int, int]] | None:
    """{module name: (fan_in, fan_out)} of the transformer's Linear layers, from its config
    alone (no weights); None when the config is not available offline."""
    from . import layouts, models

    if cfg.model.name_or_path == "world":
        return dict(world_linears())
    local = Path(cfg.model.name_or_path) / "transformer" / "config.json"
    if local.is_file():
        config = json.loads(local.read_text())
    elif cfg.model.name_or_path == models.SD35_MEDIUM_ID:
        config = models.SD35_MEDIUM["transformer"]
    else:
        return None
    try:
        layout = layouts.transformer_layout(config)
    except (KeyError, TypeError):
        return None
    return {s.name: (s.fan_in, s.fan_out) for s in layout.linears}


def lora_shapes(cfg: Config) -> dict[str, tuple[int, ...]] | None:
    """The LoRA state dict's {key: shape} this config builds (peft's key names); every
    target must match at least one Linear, else UsageError. None: the model's layout is
    not known offline (the trainer's own check then applies)."""
    linears = transformer_linears(cfg)
    if linears is None:
        return None
    from .models import dead_lora_modules

    targets = cfg.model.lora_targets
    blocks = [int(n.split(".")[1]) for n in linears if n.startswith("transformer_blocks.")]
    dead = set(dead_lora_modules({"num_layers": max(blocks) + 1 if blocks else 0}))
    linears = {n: shape for n, shape in linears.items() if n not in dead}  # add_lora excludes them too
    matched = {t: [n for n in linears if n == t or n.endswith("." + t)] for t in targets}
    missing = [t for t, names in matched.items() if not names]
    if missing:
        leaves = sorted({".".join(n.split(".")[-2:]) for n in linears if ".attn" in f".{n}"})[:8]
        raise UsageError(f"model.lora_targets: {missing[0]!r} matches no Linear module of the transformer; "
                         f"valid suffixes include {', '.join(leaves)}")
    r = cfg.model.lora_rank
    shapes: dict[str, tuple[int, ...]] = {}
    for name in sorted({n for names in matched.values() for n in names}):
        fan_in, fan_out = linears[name]
        shapes[f"{name}.lora_A.weight"] = (r, fan_in)
        shapes[f"{name}.lora_B.weight"] = (fan_out, r)
    return shapes


# ---------------------------------------------------------------------- the gate
def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` or torchrun (RANK), or the only process: the one
    that checks, creates and writes the run directory."""
    return os.environ.get("RANK", "0") == "0"


def gate(args: argparse.Namespace) -> Launch:
    """Every check, in the order a user fixes things; nothing on disk is created or changed.

    The other processes of a multi-process launch check the config only: the run folder is
    the main process's (its checks would race with the main creating it, and a new run's
    timestamped name is the main's to choose), and the main's failing check ends them all."""
    cfg, run_path = resolve(args)
    resume = args.resume is not None
    if not is_main_process():
        return Launch(cfg, run_path, resume)
    if not resume:
        check_new_run(run_path)
    shapes = lora_shapes(cfg)
    resume_from = check_resume(cfg, run_path, shapes) if resume else None
    try:
        check_machine(cfg)
    except UsageError as err:
        raise MachineUnfit(str(err)) from None
    reward = build_checked_reward(cfg)
    check_prompts(cfg, reward)
    check_models(cfg, reward)
    from .tracking import require_tracker

    require_tracker(cfg.output.report_to)
    return Launch(cfg, run_path, resume, resume_from, export_only=resume and needs_export_only(cfg, run_path, resume_from))
