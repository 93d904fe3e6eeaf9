"""Readers of run directories for the app: what state a run is in, how far it got, what
to plot, which samples to show, and why it failed. No torch, no gradio.

What a run is, its files and its state are the run contract's (rundir.py); this module
only reads them. A run launched from the app has three more files, written by its
supervisor (supervise.py): launch.json, exit.json and console.log.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..rundir import (ACTIVE_STATES, CONFIG_FILE, CONSOLE_FILE, EXIT_FILE, LAUNCH_FILE, LOG_FILE, STATUS_FILE,
                      is_run_dir, latest_checkpoint_iteration, list_sample_steps, lora_file, read_json, read_metrics,
                      read_samples, read_status, run_state)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
OOM_PATTERNS = ("out of memory", "outofmemoryerror", "cuda error: out of memory", "cannot allocate memory")
# The app shows the run contract's one derived state.
display_state = run_state


@dataclass
class RunSummary:
    name: str
    path: Path
    state: str
    iteration: int
    iterations: int
    reward_mean: float | None
    eval_reward: float | None
    preset: str
    updated: float
    has_lora: bool

    def row(self) -> list:
        progress = f"{self.iteration}/{self.iterations}" if self.iterations else ""
        return [self.name, self.state, progress, _fmt(self.reward_mean), _fmt(self.eval_reward), self.preset,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated)), "yes" if self.has_lora else ""]


SUMMARY_COLUMNS = ["run", "state", "iteration", "reward", "eval reward", "preset", "updated", "LoRA"]


def _fmt(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def run_preset(path: Path) -> str:
    """The preset line of config.yaml, read without parsing the whole file."""
    try:
        for line in (path / CONFIG_FILE).read_text().splitlines():
            if line.startswith("preset:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return ""


def summarize(path: Path) -> RunSummary:
    status = read_status(path) or {}
    rows = read_metrics(path)
    train_rows = [r for r in rows if "reward/mean" in r]
    eval_rows = [r for r in rows if r.get("eval/reward_mean") is not None]
    mtimes = [p.stat().st_mtime for p in (path / STATUS_FILE, path / LAUNCH_FILE, path) if p.exists()]
    return RunSummary(
        name=path.name,
        path=path,
        state=display_state(path),
        iteration=int(status.get("iteration") or 0),
        iterations=int(status.get("iterations") or 0),
        reward_mean=train_rows[-1]["reward/mean"] if train_rows else None,
        eval_reward=eval_rows[-1]["eval/reward_mean"] if eval_rows else None,
        preset=run_preset(path),
        updated=max(mtimes),
        has_lora=lora_file(path) is not None,
    )


def list_runs(root: str | Path) -> list[RunSummary]:
    """Runs under `root`, most recently updated first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [summarize(p) for p in root.iterdir() if not p.name.startswith(".") and is_run_dir(p)]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


# ----------------------------------------------------------------------------- progress
def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def progress_markdown(path: Path) -> str:
    """One line a user reads at a glance: state, iteration, rollouts, reward, ETA."""
    status = read_status(path) or {}
    state = display_state(path)
    iteration, iterations = int(status.get("iteration") or 0), int(status.get("iterations") or 0)
    parts = [f"**{path.name}**: {state}"]
    if iterations:
        parts.append(f"iteration {iteration}/{iterations}")
    if status.get("rollouts_total") is not None:
        parts.append(f"{status['rollouts_total']} rollouts")
    before_after = evaluation_change(path) if state in ("done", "stopped") else None
    if before_after:
        parts.append(before_after)  # what a finished run achieved, not its last training batch
    elif status.get("reward_mean") is not None:
        parts.append(f"reward {status['reward_mean']:.4f}")
    if state in ("running", "stopping") and status.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(status['eta_s'])}")
    if state == "stopping":
        parts.append("finishing the current iteration, then checkpointing")
    return " · ".join(parts)


def evaluation_change(path: Path) -> str | None:
    """`test reward 0.375 -> 0.500 (step 0 -> 20)` (and strict accuracy where reported), from
    the run's step-0 and latest evaluations; None without an evaluation after step 0."""
    from ..console import evaluations, metric_words

    baseline, latest = evaluations(read_metrics(path))
    if not baseline or not latest or latest[0] == 0:
        return None
    step, final = latest
    changes = [f"{words} {baseline[key]:.3f} -> {final[key]:.3f}" for key, words in metric_words(eval_split(path)).items()
               if baseline.get(key) is not None and final.get(key) is not None]
    return ", ".join(changes) + f" (step 0 -> {step})" if changes else None


def eval_split(path: Path) -> str:
    """prompts.eval_split of the run's config.yaml ("test" when unreadable)."""
    import yaml

    try:
        return (yaml.safe_load((path / CONFIG_FILE).read_text()) or {}).get("prompts", {}).get("eval_split", "test")
    except (OSError, yaml.YAMLError, AttributeError):
        return "test"


# ----------------------------------------------------------------------------- plots
# Plot title -> {series: metric keys (first present wins)}. A plot with several series is
# drawn only once every series has a point: gradio 6 fixes a plot's colour domain at its
# first render, so a series that appeared later would never be drawn.
PLOTS = {
    "reward (train, eval)": {"train": ["reward/mean"], "eval": ["eval/reward_mean"]},
    "evaluation (test prompts)": {"test reward": ["eval/reward_mean"], "strict accuracy": ["eval/strict_mean"]},
    "loss": {"grpo/loss": ["grpo/loss"]},
    # Logged only when train.kl_beta > 0 (no reference pass otherwise): the plot shows then only.
    "KL to the reference": {"grpo/kl": ["grpo/kl"]},
    "clip fraction": {"grpo/clipped": ["grpo/clipped", "grpo/clipfrac"]},
    "rollouts per iteration": {"rollouts/iter": ["rollouts/iter"]},
    "group size (min, mean, max)": {"max": ["group/size_max"], "mean": ["group/size_mean"], "min": ["group/size_min"]},
}
# Evaluations are points (step 0 alone is already one), drawn as a scatter plot. Their
# series come from the same eval rows, so the step-0 row already holds every series the
# plot will ever have (strict accuracy only where the reward reports it).
EVAL_PLOT = "evaluation (test prompts)"
KL_PLOT = "KL to the reference"


def metric_series(rows: list[dict], title: str) -> dict[str, list]:
    """Long-form columns {iteration, value, series} for one plot (NaNs and gaps dropped);
    empty until every series of the plot has a value (the eval plot: the series it has)."""
    out: dict[str, list] = {"iteration": [], "value": [], "series": []}
    for series, keys in PLOTS[title].items():
        for row in rows:
            value = next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)
            if value is None or isinstance(value, bool) or not math.isfinite(value):
                continue
            out["iteration"].append(int(row.get("iteration", 0)))
            out["value"].append(float(value))
            out["series"].append(series)
    if title != EVAL_PLOT and set(out["series"]) != set(PLOTS[title]):
        return {k: [] for k in out}
    return out


def group_size_histogram(rows: list[dict]) -> dict[str, list]:
    """{size, prompts}: how many prompts got each group size in the latest iteration."""
    latest = next((r["group/size_hist"] for r in reversed(rows) if isinstance(r.get("group/size_hist"), dict)), {})
    sizes = sorted(latest, key=int)
    return {"size": [int(s) for s in sizes], "prompts": [int(latest[s]) for s in sizes]}


# ----------------------------------------------------------------------------- samples
def _reward_text(row: dict) -> str:
    reward = row.get("reward")
    text = f"{reward:.3f}" if isinstance(reward, (int, float)) else "?"
    if isinstance(row.get("strict"), (int, float)):
        text += " ✓" if row["strict"] >= 0.5 else " ✗"  # strict accuracy of this image
    return text


def sample_gallery(path: Path, step: int | None = None) -> tuple[list[tuple[str, str]], list[int]]:
    """Gallery items [(file, caption)] in before/after pairs: each eval image at step 0, then
    the same prompt and seed at `step` (default: the latest eval step). Captions lead with
    the step and the reward, so a cut caption still shows them. Returns (items, steps)."""
    steps = list_sample_steps(path)
    if not steps:
        return [], []
    if step is None or step not in steps:
        step = steps[-1]
    before = read_samples(path, steps[0])
    after = {(r.get("prompt"), r.get("seed")): r for r in read_samples(path, step)} if step != steps[0] else {}
    items = []
    for row in before:
        items.append((row["file"], f"step {steps[0]} · {_reward_text(row)} · {row.get('prompt', '')} · seed {row.get('seed', '')}"))
        later = after.get((row.get("prompt"), row.get("seed")))
        if later is not None:
            items.append((later["file"], f"step {step} · {_reward_text(later)} · {later.get('prompt', '')} · seed {later.get('seed', '')}"))
    return items, steps


def sample_pairs(path: Path, step: int | None = None) -> dict[str, list]:
    """Columns for the before/after table: prompt, seed, reward at step 0 and at `step`."""
    steps = list_sample_steps(path)
    cols: dict[str, list] = {"prompt": [], "seed": [], "step 0": [], "later": [], "change": []}
    if not steps:
        return cols
    step = steps[-1] if step is None or step not in steps else step
    after = {(r.get("prompt"), r.get("seed")): r.get("reward") for r in read_samples(path, step)}
    for row in read_samples(path, steps[0]):
        b, a = row.get("reward"), after.get((row.get("prompt"), row.get("seed")))
        cols["prompt"].append(row.get("prompt", ""))
        cols["seed"].append(row.get("seed", ""))
        cols["step 0"].append(round(b, 4) if isinstance(b, (int, float)) else None)
        cols["later"].append(round(a, 4) if isinstance(a, (int, float)) else None)
        cols["change"].append(round(a - b, 4) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None)
    return cols


def eval_prompts_and_seeds(path: Path) -> tuple[list[str], list[int]]:
    """The prompts and seeds of the run's step-0 baseline (what Compare starts from)."""
    steps = list_sample_steps(path)
    rows = read_samples(path, steps[0]) if steps else []
    return [r.get("prompt", "") for r in rows], [int(r.get("seed", 0)) for r in rows]


# ----------------------------------------------------------------------------- logs and failures
def tail(path: Path, lines: int = 60, max_bytes: int = 256_000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # tqdm redraws with carriage returns: keep each line's last state.
    out = [line.rsplit("\r", 1)[-1] for line in data.splitlines()]
    return "\n".join(out[-lines:])


def log_tail(path: Path, lines: int = 60) -> str:
    """console.log (stdout + stderr, so it holds errors raised before logging started),
    else the trainer's train.log (a run started from the command line)."""
    for name in (CONSOLE_FILE, LOG_FILE):
        if (path / name).is_file():
            return tail(path / name, lines)
    return ""


def _numbered_presets() -> list[tuple[int, str]]:
    from ..config import available_presets

    return sorted((int(m.group(1)), p) for p in available_presets() if (m := re.fullmatch(r"(\d+)gb", p)))


def next_preset_down(preset: str) -> str | None:
    """The GPU preset one memory tier below `preset` (24gb -> 16gb); None at the bottom."""
    tiers = _numbered_presets()
    m = re.fullmatch(r"(\d+)gb", preset)
    if not m:
        return None
    below = [name for gib, name in tiers if gib < int(m.group(1))]
    return below[-1] if below else None


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown (the process ended without reporting an exit code)"
    if returncode < 0:
        import signal

        try:
            return f"{returncode} (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f"{returncode} (killed by signal {-returncode})"
    return str(returncode)


def failure_report(path: Path) -> dict:
    """For a failed run: its exit code, error, log tail and one suggestion."""
    status = read_status(path) or {}
    ended = read_json(path / EXIT_FILE) or {}
    rc = ended.get("returncode")
    log = log_tail(path, 40)
    error = status.get("error") or next((l for l in reversed(log.splitlines()) if l.startswith("error:")), "")
    text = f"{error}\n{log}".lower()
    preset = run_preset(path)
    if any(p in text for p in OOM_PATTERNS) or rc == -9:
        cause = ("ran out of memory" if any(p in text for p in OOM_PATTERNS)
                 else "was killed (SIGKILL; often the system's out-of-memory killer)")
        down = next_preset_down(preset)
        if down:
            suggestion = f"The run {cause}: launch it again with the next preset down, **{down}** (`--preset {down}`)."
        else:
            suggestion = (f"The run {cause} on the smallest preset: lower sampling.micro_batch, train.micro_batch "
                          "or batch.rollout_cap.")
    elif rc == 2:
        suggestion = exit_2_cause(error)
    elif status.get("state") in ACTIVE_STATES or not status:
        suggestion = "The training process died without reporting (killed or crashed). " + resume_hint(path)
    else:
        suggestion = "Read the log tail for the cause, fix it, then: " + resume_hint(path)
    return {"exit_code": describe_exit(rc), "error": error, "log_tail": log, "suggestion": suggestion}


def resume_hint(path: Path) -> str:
    """What continuing a run means: Resume only where a checkpoint exists to continue from."""
    at = latest_checkpoint_iteration(path)
    if at is None:
        return "It has no checkpoint, so there is nothing to resume: launch it again."
    return f"Resume continues from the last checkpoint (iteration {at})."


# Exit code 2 is bad input; the trainer's status names the exception for what it found
# after start-up (a model or reward that cannot load), the CLI's `error:` line the rest.
EXIT_2_CAUSES = {
    "RewardUnavailable": "A reward model the run needs could not be loaded: the error says what to install or download.",
    "ModelUnavailable": "The base model could not be loaded: the error says how to get it.",
    "ConfigError": "A setting was rejected: the error says which value to change.",
}


def exit_2_cause(error: str) -> str:
    kind = error.split(":", 1)[0].strip()
    return EXIT_2_CAUSES.get(kind, "The command line was rejected: the error says which value to change.")


def failure_markdown(path: Path) -> str:
    """The failure box: exit code, the cause in words, then the error's full text."""
    report = failure_report(path)
    lines = [f"### Run failed\n- exit code: `{report['exit_code']}`", f"\n{report['suggestion']}"]
    if report["error"]:
        lines.append("\n```text\n" + report["error"].replace("```", "` ` `") + "\n```")
    return "\n".join(lines)
