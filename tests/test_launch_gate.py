"""The launch gate: every bad input exits 2 with one `error:` line, creates no run
directory and leaves an existing run byte for byte as it was, no file rewritten."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from superflow_lite.rundir import checksum_path, list_checkpoints, read_status
from superflow_lite.train import main

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(path: Path) -> dict[str, tuple[str, int]]:
    """{relative file: (sha256, mtime in ns)} of everything under `path`: names, bytes, and
    whether a file was rewritten even with the same bytes."""
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real one-iteration tiny run (done, with a checkpoint and a LoRA)."""
    from conftest import FAST_OVERRIDES

    path = tmp_path_factory.mktemp("finished") / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(path), *FAST_OVERRIDES,
                 "train.iterations=1"]) == 0
    return path


# Each case: (id, argv with {run} = a copy of the finished run, {tmp} = the case's folder,
# {file:NAME} = a file prepared below), the message's key words, and an optional change
# made to the run copy first (a broken config.yaml, a damaged checkpoint, ...).
TINY = ["--preset", "tiny"]
REMOTE = [*TINY, "reward.weights={remote: 1.0}"]
# Seven levels of ten aliases: 10^7 values from a 300-byte line (an alias bomb).
ALIAS_BOMB = "{a: &a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
    f"{x}: &{x} [{', '.join(['*' + y] * 10)}]" for y, x in zip("abcdef", "bcdefg")) + "}"
CASES = [
    # --- numbers: finite, ranged, typed
    ("lr-1e400", [*TINY, "train.lr=1e400"], "train.lr must be a finite number"),
    ("guidance-inf", [*TINY, "sampling.guidance_scale=.inf"], "sampling.guidance_scale must be a finite number"),
    ("kl-nan", [*TINY, "train.kl_beta=.nan"], "train.kl_beta must be a finite number"),
    ("weight-inf", [*TINY, "reward.weights={shapes: .inf}"], "reward.weights.shapes must be a finite number"),
    ("option-nan", [*TINY, "reward.options={shapes: {x: [1, .nan]}}"], "reward.options.shapes.x[1] must be a finite"),
    ("lr-negative", [*TINY, "train.lr=-1"], "train.lr must be > 0"),
    ("lr-zero", [*TINY, "train.lr=0"], "train.lr must be > 0"),
    ("lr-word", [*TINY, "train.lr=fast"], "train.lr: expected float"),
    ("iterations-zero", [*TINY, "train.iterations=0"], "train.iterations must be > 0"),
    ("iterations-float", [*TINY, "train.iterations=2.5"], "train.iterations: expected int"),
    ("iterations-bool", [*TINY, "train.iterations=true"], "train.iterations: expected int"),
    ("resolution-70", [*TINY, "sampling.resolution=70"], "multiple of 16"),
    ("resolution-negative", [*TINY, "sampling.resolution=-64"], "sampling.resolution must be > 0"),
    ("num-steps-1", [*TINY, "sampling.num_steps=1"], "sampling.num_steps must be >= 2"),
    ("seq-len-huge", [*TINY, "sampling.max_sequence_length=100000"], "sampling.max_sequence_length must be <= 512"),
    ("seq-len-zero", [*TINY, "sampling.max_sequence_length=0"], "sampling.max_sequence_length must be > 0"),
    ("m-min-above-max", [*TINY, "superflow.m_min=9", "superflow.m_max=4"], "superflow.m_min (9) must be <="),
    ("rho-above-1", [*TINY, "superflow.rho=1.5"], "superflow.rho must be in (0, 1]"),
    ("ema-decay-1", [*TINY, "train.ema_decay=1"], "train.ema_decay must be in (0, 1)"),
    ("train-steps-above-T", [*TINY, "train.train_steps=99"], "train.train_steps (99) exceeds"),
    ("sde-window-T", [*TINY, "sampling.num_steps=4", "train.sde_window=4"], "train.sde_window must be <"),
    ("seed-negative", [*TINY, "train.seed=-1"], "train.seed must be >= 0"),
    ("lora-rank-zero", [*TINY, "model.lora_rank=0"], "model.lora_rank must be > 0"),
    # --- keys at every depth, choices, override syntax
    ("algorithm-ppo", [*TINY, "algorithm=ppo"], "one of superflow, flow_grpo"),
    ("quant-int4", [*TINY, "model.transformer_quant=int4"], "one of none, int8, nf4"),
    ("unknown-key", [*TINY, "train.nope=1"], "unknown key 'train.nope'"),
    ("unknown-section", [*TINY, "nope.lr=1"], "unknown key 'nope'"),
    ("nested-unknown-output", [*TINY, "output={root: runs, nmae: x}"], "unknown key 'output.nmae'"),
    ("nested-unknown-model", [*TINY, "model={lora_rank: 4, bogus: 1}"], "unknown key 'model.bogus'"),
    ("section-not-mapping", [*TINY, "train=5"], "train: expected a mapping"),
    ("top-level-section-typo", [*TINY, "outptu={root: x}"], "unknown key 'outptu'"),
    ("no-equals", [*TINY, "train.iterations"], "must look like section.key=value"),
    # --- bounded parsing: aliases, lengths, numbers too large for a float
    ("alias-bomb-override", [*TINY, f"reward.options={{shapes: {ALIAS_BOMB}}}"], "expand to more than 100,000 values"),
    ("alias-bomb-config", [*TINY, "--config", "{file:bomb.yaml}"], "expand to more than 100,000 values"),
    ("alias-cycle", [*TINY, "reward.options={shapes: &a {x: *a}}"], "refer to themselves"),
    ("nested-2000-deep", [*TINY, "reward.options={shapes: {x: " + "[" * 2_000 + "1" + "]" * 2_000 + "}}"],
     "its values nest too deep"),
    ("override-too-long", [*TINY, "train.lr=" + "1" * 20_000], "is longer than 10,000 characters"),
    ("override-huge-int", [*TINY, "train.lr=" + "1" * 400], "train.lr must be a finite number"),
    ("config-too-large", [*TINY, "--config", "{file:huge.yaml}"], "more than a config holds"),
    ("empty-key", [*TINY, "=5"], "empty key"),
    ("empty-key-part", [*TINY, "train..lr=1"], "empty key"),
    ("unknown-flag", [*TINY, "--bogus"], "unrecognized arguments: --bogus"),
    ("flag-without-value", ["--preset"], "expected one argument"),
    ("unknown-preset", ["--preset", "nope"], "unknown preset 'nope'"),
    # --- rewards, built with their options
    ("reward-unknown", [*TINY, "reward.weights={nope: 1.0}"], "unknown reward 'nope'"),
    ("reward-empty", [*TINY, "reward.weights={}"], "reward.weights is empty"),
    ("reward-weight-zero", [*TINY, "reward.weights={shapes: 0}"], "must be a non-zero finite number"),
    ("reward-weight-bool", [*TINY, "reward.weights={shapes: true}"], "reward.weights.shapes: expected float"),
    ("remote-without-url", [*TINY, "reward.weights={remote: 1.0}"], "needs reward.options.remote.url"),
    ("remote-bad-format", [*TINY, "reward.weights={remote: 1.0}",
                           "reward.options={remote: {url: 'http://127.0.0.1:9', image_format: gif}}"],
     "image_format: 'gif' is not one of"),
    ("remote-down", [*TINY, "reward.weights={remote: 1.0}",
                     "reward.options={remote: {url: 'http://127.0.0.1:9', retries: 0, timeout: 2}}"],
     "did not answer after 1 attempt"),
    ("remote-url-int", [*REMOTE, "reward.options={remote: {url: 8000}}"],
     "reward.options.remote.url: expected str or null, got 8000"),
    ("remote-timeout-list", [*REMOTE, "reward.options={remote: {url: 'http://127.0.0.1:9', timeout: [1]}}"],
     "reward.options.remote.timeout: expected float, got [1]"),
    ("remote-range-empty", [*REMOTE, "reward.options={remote: {url: 'http://127.0.0.1:9', low: 1, high: 1}}"],
     "declares the range [1, 1]"),
    ("remote-range-reversed", [*REMOTE, "reward.options={remote: {url: 'http://127.0.0.1:9', low: 2, high: 1}}"],
     "must be finite with low < high"),
    ("options-for-absent-reward", [*TINY, "reward.options={remote: {url: x}}"], "'remote' is not in reward.weights"),
    ("option-unknown", [*TINY, "reward.options={shapes: {foo: 1}}"], "unknown option 'foo'"),
    ("reward-device-word", [*TINY, "reward.device=gpu"], "reward.device must be cpu, cuda or cuda:N"),
    ("reward-device-cuda", [*TINY, "reward.device=cuda"], "reward.device=cuda but no CUDA GPU"),
    # --- prompts, loaded and read by the reward that scores them
    ("prompts-missing", [*TINY, "prompts.source=missing.txt"], "prompts.source 'missing.txt' does not exist"),
    ("prompts-unknown-set", [*TINY, "prompts.source=nope"], "neither a built-in set"),
    ("prompts-empty", [*TINY, "prompts.source={file:empty.txt}"], "holds no prompts"),
    ("prompts-fewer-than-drawn", [*TINY, "prompts.source={file:one.txt}"],
     "prompts.source has 1 distinct prompt, fewer than batch.prompts_per_iter=2"),
    ("prompts-binary", [*TINY, "prompts.source={file:binary.txt}"], "is not UTF-8 text"),
    ("prompts-unparseable", [*TINY, "prompts.source={file:free.txt}"], "the 'shapes' reward cannot score 2 of its 2"),
    ("prompts-line-5mb", [*TINY, "prompts.source={file:long.txt}"], "line 2 is 5,000,000 characters long"),
    ("prompts-unparseable-long", [*TINY, "prompts.source={file:wordy.txt}"], "the 'shapes' reward cannot score 1"),
    ("prompts-ocr-for-shapes", [*TINY, "prompts.source=ocr"], "the 'shapes' reward cannot score"),
    ("ocr-on-shapes-prompts", [*TINY, "reward.weights={ocr: 1.0}"], "no text in double quotes"),
    ("test-prompts-missing", [*TINY, "prompts.test_source=missing.txt"], "prompts.test_source 'missing.txt'"),
    ("test-prompts-unparseable", [*TINY, "prompts.test_source={file:free.txt}"], "prompts.test_source: the 'shapes'"),
    ("eval-seeds-empty", [*TINY, "prompts.eval_seeds=[]"], "prompts.eval_seeds must list at least one seed"),
    # --- the model: LoRA targets, paths
    ("lora-target-typo", [*TINY, "model.lora_targets=[attn.to_qq]"], "'attn.to_qq' matches no Linear module"),
    ("lora-targets-empty", [*TINY, "model.lora_targets=[]"], "model.lora_targets is empty"),
    ("model-dir-missing", [*TINY, "model.name_or_path=./nowhere"], "is not a directory"),
    ("model-not-cached", [*TINY, "model.name_or_path=nobody/no-such-model"], "not in the Hugging Face cache"),
    ("reward-not-cached", [*TINY, "reward.weights={pickscore: 1.0}"], "hf download yuvalkirstain/PickScore_v1"),
    ("reward-head-missing", [*TINY, "reward.weights={aesthetic: 1.0}", "reward.options={aesthetic: {head_path: ./h.pth}}"],
     "'./h.pth' (reward.options.aesthetic.head_path): no such file or folder"),
    ("model-name-empty", [*TINY, "model.name_or_path=''"], "model.name_or_path is empty"),
    # --- the machine (this suite runs without CUDA)
    ("device-cuda", [*TINY, "model.device=cuda"], "model.device=cuda but no CUDA GPU"),
    ("gpu-preset", ["--preset", "24gb"], "targets a CUDA GPU and none is visible"),
    ("int8-on-cpu", [*TINY, "model.transformer_quant=int8"], "model.transformer_quant=int8 needs a CUDA GPU"),
    ("nf4-on-cpu", [*TINY, "model.transformer_quant=nf4"], "model.transformer_quant=nf4 needs a CUDA GPU"),
    ("t5-8bit-on-cpu", [*TINY, "model.text_encoder_3=resident_8bit"], "resident_8bit needs a CUDA GPU"),
    ("adamw8bit-on-cpu", [*TINY, "train.optimizer=adamw8bit"], "train.optimizer=adamw8bit needs a CUDA GPU"),
    ("xformers-on-cpu", [*TINY, "model.attention=xformers"], "model.attention=xformers needs a CUDA GPU"),
    # --- --config files
    ("config-missing", [*TINY, "--config", "missing.yaml"], "does not exist"),
    ("config-binary", [*TINY, "--config", "{file:binary.yaml}"], "is not UTF-8 text"),
    ("config-bad-yaml", [*TINY, "--config", "{file:bad.yaml}"], "is not valid YAML at line"),
    ("config-list", [*TINY, "--config", "{file:list.yaml}"], "must hold a mapping"),
    ("config-unknown-key", [*TINY, "--config", "{file:unknown.yaml}"], "unknown key 'train.learning_rate'"),
    ("config-is-dir", [*TINY, "--config", "{tmp}"], "does not exist"),
    # --- the output folder
    ("output-holds-run", [*TINY, "--output", "{run}"], "already holds a run; resume it"),
    ("output-is-file", [*TINY, "--output", "{file:free.txt}"], "is a file, not a run directory"),
    ("output-not-empty", [*TINY, "--output", "{tmp}/full"], "not a run and not empty"),
    ("output-empty", [*TINY, "--output", ""], "--output is empty"),
    ("config-empty-path", [*TINY, "--config", " "], "--config is empty"),
    ("resume-empty-path", ["--resume", ""], "--resume is empty"),
    # --- resume
    ("resume-missing", ["--resume", "{tmp}/nowhere"], "no such directory"),
    ("resume-not-a-run", ["--resume", "{tmp}/full"], "no config.yaml there"),
    ("resume-with-preset", ["--resume", "{run}", "--preset", "tiny"], "takes the run's own config.yaml"),
    ("resume-with-config", ["--resume", "{run}", "--config", "{file:unknown.yaml}"], "takes the run's own config"),
    ("resume-with-output", ["--resume", "{run}", "--output", "{tmp}/x"], "takes the run's own config"),
    ("resume-done", ["--resume", "{run}"], "the run is done (1/1 iterations); raise train.iterations"),
    ("resume-nan-override", ["--resume", "{run}", "train.lr=.nan"], "train.lr must be a finite number"),
    ("resume-unknown-key", ["--resume", "{run}", "train.nope=1"], "unknown key 'train.nope'"),
    ("resume-other-rank", ["--resume", "{run}", "train.iterations=3", "model.lora_rank=4"],
     "holds a rank-8 LoRA on 30 modules, but the config asks for rank 4 on 30"),
    ("resume-other-targets", ["--resume", "{run}", "train.iterations=3", "model.lora_targets=[attn.to_q]"],
     "rank 8 on 4"),
    ("resume-binary-config", ["--resume", "{run}"], "its config.yaml is broken", "binary-config"),
    ("resume-bad-yaml-config", ["--resume", "{run}"], "its config.yaml is broken", "bad-yaml-config"),
    ("resume-empty-config", ["--resume", "{run}", "train.iterations=3"], "its config.yaml is broken: it is empty",
     "empty-config"),
    ("resume-cut-config", ["--resume", "{run}", "train.iterations=3"], "it lacks model, sampling", "cut-config"),
    ("resume-list-config", ["--resume", "{run}"], "must hold a mapping of config keys", "list-config"),
    ("resume-deleted-config", ["--resume", "{run}"], "its config.yaml is missing", "delete-config"),
    ("resume-invalid-config", ["--resume", "{run}"], "its config.yaml is broken: train.lr must be > 0", "bad-config"),
    ("resume-damaged-checkpoints", ["--resume", "{run}", "train.iterations=3"], "every checkpoint in it is damaged",
     "damage-checkpoints"),
    ("resume-while-training", ["--resume", "{run}", "train.iterations=3"], "the run is still training", "alive"),
]


def prepare_files(folder: Path) -> None:
    (folder / "empty.txt").write_text("\n  \n")
    (folder / "one.txt").write_text("a photo of two green triangles\na photo of two green triangles\n")
    (folder / "binary.txt").write_bytes(b"\xff\xfe\x00\x89PNG\x00" * 8)
    (folder / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    (folder / "free.txt").write_text("hello world\na cat on the moon\n")
    (folder / "bad.yaml").write_text("train:\n  lr: [1e-4\n")
    (folder / "list.yaml").write_text("- train.lr=1e-4\n")
    (folder / "unknown.yaml").write_text("train:\n  learning_rate: 1.0e-4\n")
    (folder / "full").mkdir()
    (folder / "full" / "notes.txt").write_text("mine")
    (folder / "bomb.yaml").write_text(f"reward:\n  options:\n    shapes: {ALIAS_BOMB}\n")
    (folder / "wordy.txt").write_text("a photo of a " + "red " * 2_000 + "circle\n")


# Written only for the cases that use them (megabytes each).
LARGE_FILES = {
    "long.txt": lambda: "a photo of a red circle\n" + "x" * 5_000_000 + "\n",
    "huge.yaml": lambda: "# padding\n" * 200_000,
}


def prepare_large_files(folder: Path, argv: list[str]) -> None:
    for name, text in LARGE_FILES.items():
        if any(f"{{file:{name}}}" in arg for arg in argv):
            (folder / name).write_text(text())


def damage(run: Path, how: str, keep_alive: list) -> None:
    if how == "binary-config":
        (run / "config.yaml").write_bytes(b"\x00\xff\xfe garbage \x00")
    elif how == "bad-yaml-config":
        (run / "config.yaml").write_text("train: {lr: [\n")
    elif how == "empty-config":
        (run / "config.yaml").write_text("")
    elif how == "cut-config":  # a copy cut short after its first lines
        (run / "config.yaml").write_text("".join((run / "config.yaml").read_text().splitlines(True)[:2]))
    elif how == "list-config":
        (run / "config.yaml").write_text("- train.lr=1e-4\n")
    elif how == "delete-config":
        (run / "config.yaml").unlink()
    elif how == "bad-config":
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["train"]["lr"] = -1.0
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    elif how == "damage-checkpoints":
        for ckpt in list_checkpoints(run):
            ckpt.write_bytes(ckpt.read_bytes()[:100])
    elif how == "alive":
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "superflow_lite"])
        keep_alive.append(proc)
        status = read_status(run)
        status.update(state="running", pid=proc.pid)
        status.pop("pid_started", None)
        (run / "status.json").write_text(json.dumps(status))


def expand(argv: list[str], run: Path, tmp: Path) -> list[str]:
    out = []
    for arg in argv:
        arg = arg.replace("{run}", str(run)).replace("{tmp}", str(tmp))
        if "{file:" in arg:
            start = arg.index("{file:")
            end = arg.index("}", start)
            arg = arg[:start] + str(tmp / arg[start + 6:end]) + arg[end + 1:]
        out.append(arg)
    return out


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_changes_nothing(case, finished_run, tmp_path, monkeypatch, capsys):
    _, argv, message, *how = case
    work = tmp_path / "work"
    work.mkdir()
    prepare_files(work)
    prepare_large_files(work, argv)
    run = tmp_path / "runs" / "existing"
    shutil.copytree(finished_run, run)
    keep_alive: list = []
    if how:
        damage(run, how[0], keep_alive)
    monkeypatch.chdir(tmp_path)  # output.root=runs resolves here

    def let_through(*args, **kwargs):
        raise AssertionError("the launch gate let this input through")

    monkeypatch.setattr("superflow_lite.train.run_training", let_through)
    before_run, before_tree = tree_digest(run), sorted(p.name for p in (tmp_path / "runs").iterdir())
    before_work = tree_digest(work)
    try:
        code = main(expand(argv, run, work))
    finally:
        for proc in keep_alive:
            proc.kill()
            proc.wait()
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert message in err, err
    assert len(err) < 1_000, err[:2_000]  # whatever it quotes, a readable line
    assert out == ""
    assert tree_digest(run) == before_run  # the existing run is byte for byte as it was
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before_tree  # no new run directory
    assert tree_digest(work) == before_work and not (work / "x").exists() and not (work / "nowhere").exists()


@pytest.mark.parametrize("argv,message", [
    (["--preset", "tiny", "train.lr=1e400"], "train.lr must be a finite number"),
    (["--preset", "tiny", "--config", "{file:binary.yaml}"], "is not UTF-8 text"),
    (["--resume", "{run}"], "its config.yaml is broken"),
])
def test_the_real_process_exits_2_with_one_line(tmp_path, finished_run, argv, message):
    prepare_files(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.yaml").write_bytes(b"\x00\xff not yaml")
    before = tree_digest(run)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "superflow_lite.train", *expand(argv, run, tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert tree_digest(run) == before and not (tmp_path / "runs").exists()


def test_a_damaged_newest_checkpoint_is_not_what_resume_uses(finished_run, tmp_path):
    """The gate reads the checkpoint the trainer will use: the newest intact one."""
    from superflow_lite.rundir import latest_checkpoint_iteration

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    newest = list_checkpoints(run)[0]
    fake = newest.with_name("ckpt-000007.pt")
    shutil.copyfile(newest, fake)
    shutil.copyfile(checksum_path(newest), checksum_path(fake))
    assert latest_checkpoint_iteration(run) == 7
    fake.write_bytes(fake.read_bytes()[:-10])  # truncated
    assert latest_checkpoint_iteration(run) == 1


def test_an_unavailable_reward_and_model_exit_2_at_once_with_no_run_folder(tmp_path):
    """Offline, a reward model and a base model that are not in the cache: one `error:`
    line naming both and the command that fetches them, in seconds (not after the
    base model loaded and the step-0 evaluation ran), and no run folder."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    argv = ["--preset", "tiny", "reward.weights={pickscore: 1.0}", "model.name_or_path=nobody/no-such-model"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "superflow_lite.train", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needed in ("hf download nobody/no-such-model", "hf download yuvalkirstain/PickScore_v1",
                   "reward.options.pickscore.model_name_or_path", "HF_HUB_OFFLINE is set"):
        assert needed in lines[0]
    assert time.monotonic() - started < 120
    assert not (tmp_path / "runs").exists()
