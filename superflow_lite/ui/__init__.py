"""What app.py needs: a run manager (training runs as subprocesses) and readers of the
run directory contract (rundir.py). Nothing here imports the trainer; torch and diffusers
load only when the Compare tab generates images (compare.py).

    runs.py       read a run: display state, progress, plot data, samples, log tail, failure
    manager.py    start / stop / resume / delete runs (argv lists, never a shell)
    supervise.py  the small parent of each training process: records its exit code
    form.py       launch form values -> the CLI's arguments
    compare.py    base model vs a run's LoRA, loaded with diffusers' load_lora_weights
    views.py      event handlers: widgets -> manager calls, run directories -> widget values
    app.py        the Gradio layout and main() (python app.py at the top level calls it)
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app never phones home
