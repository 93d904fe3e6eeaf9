"""What each widget shows: event handlers that turn form values into manager calls and
run directories into component values. The layout is in app.py."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pandas as pd

from ..config import ConfigError
from ..rundir import METRICS_FILE, SAMPLES_DIR, latest_checkpoint_iteration, read_metrics, read_status
from .compare import CompareRefused, Comparer
from .form import COMMON_FIELDS, LaunchForm, builtin_prompt_sets, preset_values
from .manager import LaunchError, RunManager
from .runs import (EVAL_PLOT, KL_PLOT, PLOTS, SUMMARY_COLUMNS, display_state, eval_prompts_and_seeds,
                   failure_markdown, group_size_histogram, list_runs, log_tail, lora_file, metric_series, progress_markdown,
                   sample_gallery, sample_pairs)

COMMON_NAMES = list(COMMON_FIELDS)


def error_text(err: Exception) -> str:
    """The CLI prints `error: <message>`; the app shows the same line."""
    return f"**error:** {err}"


def plot_value(columns: dict[str, list], dtypes: dict[str, str]) -> pd.DataFrame | None:
    """A typed DataFrame for a plot; None while there is nothing to draw (an empty frame's
    object columns would fix the plot's axis types wrongly for the rest of the session)."""
    if not next(iter(columns.values())):
        return None
    return pd.DataFrame(columns).astype(dtypes)


def plan_line(config_yaml: str) -> str:
    """The memory plan's predicted peak for a resolved config (memory.plan_for_config)."""
    from ..config import config_from_dict, load_yaml
    from ..memory import plan_for_config
    from ..vram import GIB

    plan = plan_for_config(config_from_dict(load_yaml(config_yaml)))
    fits = "fits" if plan.fits else "does NOT fit"
    text = (f"Memory plan: predicted peak **{plan.peak_bytes / GIB:.2f} GiB** in {plan.peak_phase} "
            f"({fits} {plan.card_gib:.1f} GiB: {plan.card_source}); rollout cap R = {plan.rollout_cap}.")
    return text + "".join(f"\n- {p}" for p in plan.problems)


def padded(values: list[float], least: float) -> list[float]:
    """[low, high] of `values`, widened on each side by 5% of their span (at least `least`)."""
    low, high = min(values), max(values)
    margin = max(0.05 * (high - low), least)
    return [low - margin, high + margin]


class Views:
    def __init__(self, manager: RunManager, comparer: Comparer | None = None):
        self.manager = manager
        self.comparer = comparer or Comparer()

    # ------------------------------------------------------------------ launch
    def preset_fields(self, preset: str):
        """The preset's own values in the common fields; 'as preset' shows what that means."""
        values = preset_values(preset)
        weights = ", ".join(f"{k}: {v:g}" for k, v in values["reward_weights"].items())
        return [gr.update(value="", info=f"as preset: {values['algorithm']}"),
                gr.update(value="", info=f"as preset: {weights}"),
                gr.update(value="", info=f"as preset: {values['prompts_source']}")] + [values[n] for n in COMMON_NAMES]

    def reward_choices(self) -> list[tuple[str, str]]:
        return [("as preset", "")] + [(r, r) for r in self.reward_names()]

    @staticmethod
    def prompt_choices() -> list[tuple[str, str]]:
        return [("as preset", "")] + [(p, p) for p in builtin_prompt_sets()]

    @staticmethod
    def reward_names() -> list[str]:
        from ..rewards.registry import available_rewards

        return available_rewards()

    def _form(self, preset, algorithm, name, reward, prompts, prompts_file, *rest) -> LaunchForm:
        common, extra = dict(zip(COMMON_NAMES, rest[:-1])), rest[-1]
        return LaunchForm(preset=preset, algorithm=algorithm or "", name=(name or "").strip(), reward=reward or "", prompts=prompts or "",
                          prompts_file=prompts_file or None, common=common, extra=extra or "")

    def preview(self, *form_values):
        """(message, command, resolved YAML) for the form, or the CLI's error. A config this
        machine cannot run (a GPU preset on a CPU) is shown with the reason, not as ready."""
        try:
            form = self._form(*form_values)
            p = self.manager.preview(form.preset, form.overrides(self.manager.uploads_dir), form.name)
        except (ConfigError, LaunchError, OSError) as err:
            return error_text(err), "", ""
        plan = plan_line(p.config_yaml)
        if p.machine_problem:
            return f"**Cannot launch on this machine:** {p.machine_problem}\n\n{plan}", p.command, p.config_yaml
        return f"Ready to launch **{p.name}** in `{p.run_path}`.\n\n{plan}", p.command, p.config_yaml

    def launch(self, *form_values):
        """Start the run; on success switch to Watch with the new run selected. A refused
        launch clears the command and config, so nothing on screen looks launched."""
        try:
            form = self._form(*form_values)
            p = self.manager.start(form.preset, form.overrides(self.manager.uploads_dir), form.name)
        except (ConfigError, LaunchError, OSError) as err:
            return error_text(err), "", "", gr.skip(), gr.skip()
        names = self.run_names()
        return (f"Started **{p.name}**. It keeps running if you close this tab.", p.command, p.config_yaml,
                gr.update(choices=names, value=p.name), gr.Tabs(selected="watch"))

    # ------------------------------------------------------------------ watch
    def run_names(self) -> list[str]:
        return [r.name for r in list_runs(self.manager.root)]

    def _path(self, name: str | None) -> Path | None:
        if not name:
            return None
        try:
            return self.manager.existing_run(name)
        except LaunchError:
            return None

    def watch(self, name: str | None, step: str | None, last_signature: str | None):
        """Progress, failure box, plots, samples and log of one run. Plots and samples are
        only re-sent when the run's files changed (signature), so nothing flickers."""
        path = self._path(name)
        if path is None:
            empty = [None] * len(PLOT_TITLES)
            return ["Select a run (or launch one).", gr.update(value="", visible=False), *empty, [], None,
                    gr.update(choices=[], value=None), "", ""]
        progress = progress_markdown(path)
        failed = display_state(path) == "failed"
        failure = gr.update(value=failure_markdown(path) if failed else "", visible=failed)
        signature = self._signature(path, step)
        if signature == last_signature:
            skips = [gr.skip()] * (len(PLOT_TITLES) + 3)
            return [progress, failure, *skips, log_tail(path), signature]
        rows = read_metrics(path)
        plots = [self._plot(t, metric_series(rows, t)) for t in PLOTS]
        plots.append(plot_value(group_size_histogram(rows), {"size": "int64", "prompts": "int64"}))
        chosen = int(step) if step not in (None, "", "latest") else None
        items, steps = sample_gallery(path, chosen)
        # Eight columns: four before/after pairs a row, each pair side by side.
        gallery = gr.update(value=items, columns=8 if len(items) >= 8 else max(len(items), 2))
        table = self._pairs_table(path, chosen, steps)
        step_choices = ["latest"] + [str(s) for s in steps]
        step_value = step if step in step_choices else "latest"
        return [progress, failure, *plots, gallery, table, gr.update(choices=step_choices, value=step_value),
                log_tail(path), signature]

    @staticmethod
    def _plot(title: str, columns: dict[str, list]):
        """One plot's update. The evaluation points get a margin on every side, so the first
        and last are drawn whole; the KL plot shows only when the run computes a KL."""
        value = plot_value(columns, {"iteration": "int64", "value": "float64", "series": "str"})
        if title == KL_PLOT:
            return gr.update(value=value, visible=value is not None)
        if title == EVAL_PLOT and value is not None:
            return gr.update(value=value, x_lim=padded(columns["iteration"], 0.5), y_lim=padded(columns["value"], 0.02))
        return value

    @staticmethod
    def _pairs_table(path: Path, chosen: int | None, steps: list[int]) -> pd.DataFrame | None:
        """Reward per (prompt, seed) at step 0 and at the shown step (step 0 alone: one column)."""
        pairs = sample_pairs(path, chosen)
        if not pairs["prompt"]:
            return None
        shown = chosen if chosen in steps else steps[-1]
        frame = pd.DataFrame(pairs)
        if shown == steps[0]:
            return frame.drop(columns=["later", "change"])
        return frame.rename(columns={"later": f"step {shown}"})

    @staticmethod
    def _signature(path: Path, step) -> str:
        parts = [str(path), str(step)]
        for f in (path / METRICS_FILE, path / SAMPLES_DIR):
            parts.append(str(f.stat().st_mtime_ns) if f.exists() else "-")
        samples = path / "samples"
        if samples.is_dir():
            parts += sorted(f"{d.name}:{(d / 'index.json').exists()}" for d in samples.iterdir())
        return "|".join(parts)

    # ------------------------------------------------------------------ JSON endpoints (gradio_client, scripts)
    def runs_api(self) -> list[dict]:
        """Every run: name, state, iteration, iterations, reward, eval reward, preset, LoRA."""
        return [{"name": r.name, "state": r.state, "iteration": r.iteration, "iterations": r.iterations,
                 "reward_mean": r.reward_mean, "eval_reward": r.eval_reward, "preset": r.preset, "has_lora": r.has_lora}
                for r in list_runs(self.manager.root)]

    def status_api(self, name: str) -> dict:
        """One run's status.json as the app sees it (state corrected for crashes)."""
        path = self._path(name)
        if path is None:
            return {"name": name, "state": "unknown"}
        status = read_status(path) or {}
        return {**status, "name": name, "state": display_state(path)}

    # ------------------------------------------------------------------ runs
    def runs_table(self):
        runs = list_runs(self.manager.root)
        return pd.DataFrame([r.row() for r in runs], columns=SUMMARY_COLUMNS)

    def refresh_lists(self, watch_name, runs_name, compare_name, last_names):
        """Keep the three run pickers and the table in step with the runs folder."""
        names = self.run_names()
        key = json.dumps(names)
        table = self.runs_table()
        if key == last_names:
            return table, gr.skip(), gr.skip(), gr.skip(), key

        def pick(current):
            return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

        return table, pick(watch_name), pick(runs_name), pick(compare_name), key

    def stop(self, name: str):
        try:
            return self.manager.stop(name)
        except LaunchError as err:
            return error_text(err)

    def resume(self, name: str, iterations, extra: str):
        from .form import parse_extra

        try:
            overrides = ([f"train.iterations={int(iterations)}"] if iterations else []) + parse_extra(extra)
            command = self.manager.resume(name, overrides)
        except (ConfigError, LaunchError, ValueError) as err:
            return error_text(err), gr.skip()
        return f"Resumed **{name}**: `{command}`", gr.update(value=name)

    def ask_delete(self, name: str):
        if not self._path(name):
            return gr.update(visible=False), error_text(f"no run named {name!r}")
        return gr.update(visible=True), (f"Delete **{name}** and everything in it (checkpoints, samples, LoRA)? "
                                         "This cannot be undone.")

    def confirm_delete(self, name: str):
        try:
            self.manager.delete(name)
        except LaunchError as err:
            return gr.update(visible=False), error_text(err)
        return gr.update(visible=False), f"Deleted **{name}**."

    def download(self, name: str | None):
        """The DownloadButton for the selected run's LoRA (zipped lora/ folder)."""
        path = self._path(name)
        if path is None or lora_file(path) is None:
            return gr.update(value=None, interactive=False, label="Download LoRA (none yet)")
        zipped = self.manager.lora_zip(name)
        return gr.update(value=str(zipped), interactive=True, label=f"Download LoRA ({zipped.name})")

    def download_if_changed(self, name: str | None, last: str | None):
        """The tick's view of the download button: re-sent only when the LoRA file changed."""
        path = self._path(name)
        weights = lora_file(path) if path else None
        key = f"{name}:{weights.stat().st_mtime_ns if weights else '-'}"
        return (gr.skip(), key) if key == last else (self.download(name), key)

    def run_details(self, name: str | None):
        """Status lines of the selected run, for the Runs tab."""
        path = self._path(name)
        if path is None:
            return ""
        text, state = progress_markdown(path), display_state(path)
        if state == "failed":
            text += "\n\n" + failure_markdown(path)
        if state in ("stopped", "done", "failed") and latest_checkpoint_iteration(path) is not None:
            text += f"\n\nResume from the command line: `python -m superflow_lite.train --resume {path}`"
        elif state == "failed":
            text += "\n\nIt has no checkpoint to resume from: launch it again."
        return text

    # ------------------------------------------------------------------ compare
    def compare_defaults(self, name: str | None):
        """The run's eval prompts and seeds (its step-0 baseline), as the Compare form's start."""
        path = self._path(name)
        if path is None:
            return "", "0"
        prompts, seeds = eval_prompts_and_seeds(path)
        return "\n".join(dict.fromkeys(prompts)), ", ".join(str(s) for s in dict.fromkeys(seeds)) or "0"

    def compare_defaults_if_empty(self, name: str | None, prompts: str):
        """On opening the Compare tab: fill the prompts unless the user typed some."""
        return self.compare_defaults(name) if not (prompts or "").strip() else (gr.skip(), gr.skip())

    def compare(self, name: str | None, prompts_text: str, seeds_text: str, scale: float, steps):
        path = self._path(name)
        if path is None:
            return [], [], None, error_text("choose a run first")
        prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
        try:
            seeds = [int(s) for s in (seeds_text or "0").replace(",", " ").split()]
        except ValueError:
            return [], [], None, error_text(f"seeds must be whole numbers separated by commas, got {seeds_text!r}")
        if not prompts:
            return [], [], None, error_text("type at least one prompt (one per line)")
        try:
            rows = self.comparer.compare(path, prompts, seeds, float(scale), int(steps) if steps else None,
                                         training_run=self.manager.active_run())
        except (FileNotFoundError, CompareRefused) as err:
            return [], [], None, error_text(err)
        base = [(r.base_image, f"base · {r.prompt} · seed {r.seed} · reward {r.base_reward:.3f}") for r in rows]
        lora = [(r.lora_image, f"LoRA ×{scale:g} · {r.prompt} · seed {r.seed} · reward {r.lora_reward:.3f}") for r in rows]
        table = pd.DataFrame([[r.prompt, r.seed, round(r.base_reward, 4), round(r.lora_reward, 4),
                               round(r.lora_reward - r.base_reward, 4)] for r in rows],
                             columns=["prompt", "seed", "base reward", "LoRA reward", "difference"])
        mean_b = sum(r.base_reward for r in rows) / len(rows)
        mean_l = sum(r.lora_reward for r in rows) / len(rows)
        summary = (f"Mean reward: base **{mean_b:.4f}**, LoRA ×{scale:g} **{mean_l:.4f}** "
                   f"({mean_l - mean_b:+.4f}) over {len(rows)} images.")
        return base, lora, table, summary


PLOT_TITLES = [*PLOTS, "group sizes in the latest iteration"]
