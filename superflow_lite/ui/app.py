"""The Gradio app: Launch, Watch, Runs, Compare. `python app.py --help` for options.

Binds 127.0.0.1 unless --host is given; serves files only from the runs folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr

from ..config import available_presets
from .form import COMMON_FIELDS, algorithm_choices
from .manager import RunManager
from .runs import EVAL_PLOT, KL_PLOT, PLOTS
from .views import PLOT_TITLES, Views

REFRESH_S = 2.0
# Gallery captions sit below their image, never over it: Gradio overlays them on the
# thumbnail's lower part, exactly where counts and "below" relations are judged. Each
# thumbnail becomes a column (the square image, then its caption, wrapped, never cut).
GALLERIES = ("#samples", "#compare-base", "#compare-lora")
CSS = "\n".join(f"""
{g} .grid-wrap {{ padding-top: 2.2em !important; }}  /* the gallery's label badge stays off the first image */
{g} .thumbnail-item {{
  aspect-ratio: auto !important; height: auto !important; display: flex !important; flex-direction: column !important;
}}
{g} .thumbnail-item > img {{ aspect-ratio: 1 / 1; width: 100% !important; height: auto !important; flex: none; }}
{g} .caption-label {{
  position: static !important; max-width: 100% !important; white-space: normal !important; opacity: 1 !important;
  border: none !important; border-top: 1px solid var(--border-color-primary) !important; border-radius: 0 !important;
  font-size: 11px !important;
}}""" for g in GALLERIES)
# After a refresh, keep the log scrolled to its newest line, unless it did not change.
SCROLL_LOG_JS = """() => {
  const t = document.querySelector('#log-tail textarea');
  if (t && t.dataset.len !== String(t.value.length)) {
    t.dataset.len = String(t.value.length);
    t.scrollTop = t.scrollHeight;
  }
}"""
COMMON_LABELS = {
    "iterations": "Iterations", "lr": "Learning rate", "lora_rank": "LoRA rank",
    "prompts_per_iter": "Prompts per iteration", "rollout_cap": "Rollout cap per iteration (0 = memory plan)",
    "eval_every": "Eval every (iterations)", "checkpoint_every": "Checkpoint every (iterations)", "seed": "Seed",
}
INTEGER_FIELDS = {"iterations", "lora_rank", "prompts_per_iter", "rollout_cap", "eval_every", "checkpoint_every", "seed"}


def preset_choices() -> list[str]:
    """The size presets, then the task-* presets (a task's reward and prompts)."""
    from ..config import task_presets

    return available_presets() + task_presets()


def default_preset() -> str:
    """The preset the CLI picks on this machine: tiny-focus without a GPU."""
    from ..config import resolve_preset_name

    name = resolve_preset_name("auto")
    return name if name in available_presets() else "tiny"


def launch_tab(views: Views, preset: str):
    algorithm_info, reward_info, prompts_info, *values = views.preset_fields(preset)
    with gr.Row():
        preset_dd = gr.Dropdown(preset_choices(), value=preset, label="Preset (by GPU memory; tiny = CPU shapes world; "
                                "task-*: a reward's recipe)", elem_id="preset")
        algorithm_dd = gr.Dropdown(algorithm_choices(), value="", label="Algorithm", info=algorithm_info["info"],
                                   elem_id="algorithm")
        name_tb = gr.Textbox(label="Run name (empty: <preset>-<algorithm>-<time>)", elem_id="run-name")
        reward_dd = gr.Dropdown(views.reward_choices(), value="", label="Reward", info=reward_info["info"])
    with gr.Row():
        prompts_dd = gr.Dropdown(views.prompt_choices(), value="", label="Prompts (built-in set)", info=prompts_info["info"])
        prompts_file = gr.File(label="...or upload prompts (.txt, one per line)", file_types=[".txt"], type="filepath")
    with gr.Accordion("Common settings (the preset's values)", open=True):
        with gr.Row():
            common = [gr.Number(value, label=COMMON_LABELS[n], precision=0 if n in INTEGER_FIELDS else None,
                                elem_id=f"field-{n}") for n, value in zip(COMMON_FIELDS, values)]
    extra_tb = gr.Textbox(label="More overrides, one key=value per line (as on the command line)", lines=3,
                          placeholder="sampling.num_steps=10\ntrain.kl_beta=0.04", elem_id="extra-overrides")
    with gr.Row():
        preview_btn = gr.Button("Preview config and command")
        launch_btn = gr.Button("Launch", variant="primary", elem_id="launch")
    message = gr.Markdown(elem_id="launch-message")
    command = gr.Code(label="Equivalent command line", language="shell", interactive=False)
    config_yaml = gr.Code(label="Resolved config (config.yaml)", language="yaml", interactive=False)
    form = [preset_dd, algorithm_dd, name_tb, reward_dd, prompts_dd, prompts_file, *common, extra_tb]
    preset_dd.change(views.preset_fields, preset_dd, [algorithm_dd, reward_dd, prompts_dd, *common],
                     api_visibility="private")
    preview_btn.click(views.preview, form, [message, command, config_yaml], api_name="preview")
    return form, launch_btn, (message, command, config_yaml)


def watch_tab():
    with gr.Row():
        run_dd = gr.Dropdown([], label="Run", elem_id="watch-run", scale=3, allow_custom_value=True)
        stop_btn = gr.Button("Stop (checkpoints first)", elem_id="watch-stop", scale=1)
    progress = gr.Markdown(elem_id="progress")
    failure = gr.Markdown(visible=False, elem_id="failure")
    plots = []
    # Tick labels as numbers are written (32, 0.25, 1e-06), not with six fixed decimals.
    axes = {"x_axis_format": "~g", "y_axis_format": "~g", "height": 220}
    for row, titles in enumerate((PLOT_TITLES[:4], PLOT_TITLES[4:7])):
        with gr.Row():
            for title in titles:
                several = len(PLOTS[title]) > 1
                # Evaluations are points (a run's step 0 is one point, which a line cannot show).
                kind = gr.ScatterPlot if title == EVAL_PLOT else gr.LinePlot
                plots.append(kind(x="iteration", y="value", color="series" if several else None, title=title,
                                  y_title="" if several else next(iter(PLOTS[title])),
                                  visible=title != KL_PLOT, **axes))
            if row == 1:
                plots.append(gr.BarPlot(x="size", y="prompts", title=PLOT_TITLES[7], x_title="group size (rollouts)",
                                        **axes))
    with gr.Row():
        step_dd = gr.Dropdown(["latest"], value="latest", label="Eval step (each image beside its step-0 baseline)",
                              scale=1, allow_custom_value=True)
    gallery = gr.Gallery(label="Eval samples in before/after pairs: step 0, then the chosen step (reward, ✓ = strict)",
                         columns=8, height="auto", object_fit="contain", format="png", elem_id="samples")
    pairs = gr.Dataframe(interactive=False, label="Reward per prompt and seed: step 0 and the chosen step",
                         elem_id="sample-pairs", max_height=320)
    log = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, autoscroll=True, elem_id="log-tail")
    stop_msg = gr.Markdown()
    return run_dd, stop_btn, progress, failure, plots, step_dd, gallery, pairs, log, stop_msg


def runs_tab():
    table = gr.Dataframe(interactive=False, label="Runs", elem_id="runs-table")
    with gr.Row():
        run_dd = gr.Dropdown([], label="Run", elem_id="runs-run", scale=2, allow_custom_value=True)
        resume_iters = gr.Number(label="Resume: total iterations (0: as configured)", precision=0, scale=1)
        resume_extra = gr.Textbox(label="Resume: more overrides (key=value per line)", lines=1, scale=2)
    details = gr.Markdown(elem_id="run-details")
    with gr.Row():
        stop_btn = gr.Button("Stop", elem_id="runs-stop")
        resume_btn = gr.Button("Resume", elem_id="runs-resume")
        download_btn = gr.DownloadButton("Download LoRA (none yet)", interactive=False, elem_id="download-lora")
        delete_btn = gr.Button("Delete…", variant="stop", elem_id="runs-delete")
    with gr.Row(visible=False) as confirm_row:
        confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
        cancel_btn = gr.Button("Cancel")
    message = gr.Markdown(elem_id="runs-message")
    return table, run_dd, resume_iters, resume_extra, details, stop_btn, resume_btn, download_btn, delete_btn, \
        confirm_row, confirm_btn, cancel_btn, message


def compare_tab():
    with gr.Row():
        run_dd = gr.Dropdown([], label="Run (its exported LoRA)", elem_id="compare-run", scale=2,
                             allow_custom_value=True)
        scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale", elem_id="lora-scale", scale=2)
        steps = gr.Number(label="Steps (0: the run's eval steps)", precision=0, scale=1)
    with gr.Row():
        prompts = gr.Textbox(label="Prompts, one per line (the run's eval prompts, or type your own)", lines=4,
                             elem_id="compare-prompts", scale=3)
        seeds = gr.Textbox(label="Seeds", value="0", scale=1, elem_id="compare-seeds")
    generate_btn = gr.Button("Generate base vs LoRA", variant="primary", elem_id="compare-generate")
    summary = gr.Markdown(elem_id="compare-summary")
    with gr.Row():
        base = gr.Gallery(label="Base model", columns=4, height="auto", format="png", elem_id="compare-base")
        lora = gr.Gallery(label="With the LoRA", columns=4, height="auto", format="png", elem_id="compare-lora")
    table = gr.Dataframe(interactive=False, label="Reward per image")
    return run_dd, scale, steps, prompts, seeds, generate_btn, summary, base, lora, table


def build_app(manager: RunManager, preset: str | None = None) -> gr.Blocks:
    views = Views(manager)
    with gr.Blocks(title="superflow_lite") as demo:
        gr.Markdown(f"## superflow_lite: SuperFlow GRPO + LoRA\nRuns folder: `{manager.root}`")
        watch_sig, names_key, lora_key = gr.State(None), gr.State(None), gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("Launch", id="launch"):
                form, launch_btn, launch_out = launch_tab(views, preset or default_preset())
            with gr.Tab("Watch", id="watch"):
                w_run, w_stop, progress, failure, plots, step_dd, gallery, pairs, log, w_msg = watch_tab()
            with gr.Tab("Runs", id="runs"):
                (table, r_run, r_iters, r_extra, details, r_stop, r_resume, download, delete,
                 confirm_row, confirm, cancel, r_msg) = runs_tab()
            with gr.Tab("Compare", id="compare") as compare_tab_:
                c_run, c_scale, c_steps, c_prompts, c_seeds, c_go, c_summary, c_base, c_lora, c_table = compare_tab()

        watch_outputs = [progress, failure, *plots, gallery, pairs, step_dd, log, watch_sig]
        launch_btn.click(views.launch, form, [*launch_out, w_run, tabs], api_name="launch")
        for trigger in (w_run.change, step_dd.change):
            trigger(views.watch, [w_run, step_dd, gr.State(None)], watch_outputs, show_progress="hidden",
                    api_visibility="private")
        timer = gr.Timer(REFRESH_S)
        timer.tick(views.watch, [w_run, step_dd, watch_sig], watch_outputs, show_progress="hidden",
                   api_visibility="private").then(None, js=SCROLL_LOG_JS, show_progress="hidden")
        timer.tick(views.refresh_lists, [w_run, r_run, c_run, names_key], [table, w_run, r_run, c_run, names_key],
                   show_progress="hidden", api_visibility="private")
        timer.tick(views.run_details, r_run, details, show_progress="hidden", api_visibility="private")
        timer.tick(views.download_if_changed, [r_run, lora_key], [download, lora_key], show_progress="hidden",
                   api_visibility="private")
        w_stop.click(views.stop, w_run, w_msg, api_name="stop")
        r_stop.click(views.stop, r_run, r_msg, api_visibility="private")
        r_resume.click(views.resume, [r_run, r_iters, r_extra], [r_msg, w_run], api_name="resume")
        delete.click(views.ask_delete, r_run, [confirm_row, r_msg], api_visibility="private")
        cancel.click(lambda: (gr.update(visible=False), ""), None, [confirm_row, r_msg], api_visibility="private")
        confirm.click(views.confirm_delete, r_run, [confirm_row, r_msg], api_name="delete")
        r_run.change(views.download, r_run, download, api_name="download")
        r_run.change(views.run_details, r_run, details, api_visibility="private")
        c_run.change(views.compare_defaults, c_run, [c_prompts, c_seeds], api_name="compare_defaults")
        compare_tab_.select(views.compare_defaults_if_empty, [c_run, c_prompts], [c_prompts, c_seeds],
                            api_visibility="private")
        c_go.click(views.compare, [c_run, c_prompts, c_seeds, c_scale, c_steps], [c_base, c_lora, c_table, c_summary],
                   api_name="compare")
        gr.api(views.runs_api, api_name="runs")
        gr.api(views.status_api, api_name="status")
        demo.load(views.refresh_lists, [w_run, r_run, c_run, names_key], [table, w_run, r_run, c_run, names_key],
                  api_visibility="private")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py",
                                     description="The superflow_lite app: launch, watch and compare runs.")
    parser.add_argument("--runs", default="runs", help="the runs folder (default: ./runs); only files in it are served")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    parser.add_argument("--preset", default=None, help="preset preselected in the form (default: what fits this machine)")
    return parser.parse_args(argv)


def launch(manager: RunManager, host: str = "127.0.0.1", port: int | None = None, preset: str | None = None,
           block: bool = True) -> gr.Blocks:
    from ..console import filter_library_notices, hide_loading_bars

    filter_library_notices()  # Compare loads pipelines and LoRAs in this process
    hide_loading_bars()
    manager.root.mkdir(parents=True, exist_ok=True)
    demo = build_app(manager, preset)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, allowed_paths=[str(manager.root)], css=CSS,
                prevent_thread_lock=not block, show_error=True, quiet=not block)
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    launch(RunManager(Path(args.runs)), host=args.host, port=args.port, preset=args.preset)
