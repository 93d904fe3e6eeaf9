"""The memory plan: exact parameter terms, measured activation laws, decisions, presets, CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from superflow_lite import layouts, memory, models, rollout, text_encoders, vram
from superflow_lite.config import build_config

torch.set_num_threads(1)
PRESETS = ["12gb", "16gb", "24gb", "48gb", "80gb"]
GIB = 2**30


@pytest.fixture(scope="module")
def meta_parts():
    """SD3.5-Medium's five parts built from the real configs on the meta device."""
    with torch.device("meta"):
        return {name: models.build_component(name, c) for name, c in models.SD35_MEDIUM.items()}


def test_config_dicts_are_the_published_architectures(meta_parts):
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in meta_parts.items()}
    # Published sizes: MMDiT-X 2.24 B + the 0.23 B positional table, T5-XXL encoder 4.76 B,
    # CLIP-G 695 M, CLIP-L 124 M, VAE 84 M: 8.13 B in all.
    assert counts == {"transformer": 2_243_171_520, "vae": 83_819_683, "text_encoder": 123_650_304,
                      "text_encoder_2": 694_659_840, "text_encoder_3": 4_762_310_656}
    pos = meta_parts["transformer"].pos_embed.pos_embed
    assert pos.numel() == 384 * 384 * 1536
    clip_g = models.SD35_MEDIUM["text_encoder_2"]
    assert (clip_g["hidden_size"], clip_g["num_hidden_layers"], clip_g["num_attention_heads"],
            clip_g["intermediate_size"], clip_g["projection_dim"]) == (1280, 32, 20, 5120, 1280)


@pytest.mark.parametrize("part", list(models.SD35_MEDIUM))
def test_layout_formula_equals_meta_build(meta_parts, part):
    built = layouts.layout_of_module(meta_parts[part])
    formula = layouts.LAYOUTS[part](models.SD35_MEDIUM[part])
    assert formula == built  # every Linear (name, shape, bias), the other params, buffers, largest module


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_parameter_bytes_equal_meta_build(meta_parts, preset):
    """Each static weight term of the plan = bytes of the meta build in the preset's storage."""
    cfg = build_config(preset)
    plan = memory.plan_for_config(cfg)
    q = cfg.model.transformer_quant

    def stored(module, quant, skip):
        total, seen = 0, set()
        for name, mod in module.named_modules():
            own = [p for p in mod.parameters(recurse=False) if id(p) not in seen]  # T5's tied embedding once
            seen.update(id(p) for p in own)
            if isinstance(mod, torch.nn.Linear) and quant != "none" and not any(
                    name.rsplit(".", 1)[-1] == k or name == k for k in skip):
                w, b = mod.weight.numel(), mod.out_features if mod.bias is not None else 0
                total += (w + 4 * mod.out_features if quant == "int8" else (w + 1) // 2 + 4 * -(-w // 64) + 64) + 2 * b
            else:
                total += 2 * sum(p.numel() for p in own)
        return total + 2 * sum(b.numel() for b in module.buffers() if b.is_floating_point())

    terms = {k.split(" ")[0] + (" " + k.split(" ")[1] if k.startswith(("CLIP", "T5", "reward")) else ""): v
             for k, v in plan.static.items()}
    assert terms["transformer"] == stored(meta_parts["transformer"], q, ("proj_out",))
    assert terms["VAE"] == stored(meta_parts["vae"], "none", ())
    if cfg.model.clip_encoders == "resident":
        assert terms["CLIP-L text"] == stored(meta_parts["text_encoder"], "none", ())
        assert terms["CLIP-G text"] == stored(meta_parts["text_encoder_2"], "none", ())
    t5 = {"resident": ("none", ()), "resident_8bit": ("int8", text_encoders.T5_INT8_SKIP)}.get(cfg.model.text_encoder_3)
    if t5:
        assert terms["T5-XXL encoder"] == stored(meta_parts["text_encoder_3"], *t5)
    else:
        assert not any(k.startswith("T5") for k in terms)


def test_lora_parameter_count_equals_peft(meta_parts):
    from peft import LoraConfig

    cfg = build_config("24gb")
    with torch.device("meta"):
        tr = models.build_component("transformer", models.SD35_MEDIUM["transformer"])
    tr.requires_grad_(False)
    dead = models.dead_lora_modules(models.SD35_MEDIUM["transformer"])
    tr.add_adapter(LoraConfig(r=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha, target_modules=cfg.model.lora_targets,
                              exclude_modules=dead))
    got = sum(p.numel() for p in tr.parameters() if p.requires_grad)
    shapes = layouts.lora_tensor_shapes(layouts.layout_of_module(meta_parts["transformer"]), cfg.model.lora_targets,
                                        cfg.model.lora_rank, dead)
    # 8 projections x 24 blocks, less the last block's add_q_proj (and its absent to_add_out)
    assert got == sum(r * c for r, c in shapes) == 18_776_064 - 2 * 32 * 1536
    assert memory.plan_for_config(cfg).static["LoRA gradients fp32"] == 4 * got


def _all_terms():
    meas = memory.measurements()
    for name, term in meas["transformer"]["variants"].items():
        yield f"transformer/{name}", term, lambda p: {"seq_img": p["seq_img"], "seq_txt": p["seq_txt"]}
    yield "vae_decode", meas["vae_decode"], lambda p: {"pixels": p["pixels"]}
    yield "t5", meas["encoders"]["t5"], lambda p: {k: p[k] for k in ("tokens", "tokens_sq", "length_sq")}
    yield "clip", meas["encoders"]["clip"], lambda p: {"rows": p["rows"]}
    for name, term in meas["rewards"].items():
        if isinstance(term, dict):
            yield f"reward/{name}", term, lambda p: {"rows": p["rows"]}


@pytest.mark.parametrize("name,term,features", list(_all_terms()), ids=[t[0] for t in _all_terms()])
def test_activation_laws_reproduce_their_measurements(name, term, features):
    assert len(term["points"]) >= 2
    for point in term["points"]:
        predicted = memory.law(term, **features(point))
        assert abs(predicted - point["bytes"]) <= 0.10 * point["bytes"], (name, point)


def test_activation_tracker_counts_real_allocations():
    """The measurement's tracker gives the same bytes on real tensors and on FakeTensors."""
    check = load_benchmark("measure_activations").tracker_check()
    assert check["real_bytes"] == check["fake_bytes"] > 0
    assert memory.measurements()["tracker_check"]["real_bytes"] == check["real_bytes"]


def test_phase_terms_come_from_the_laws():
    cfg = build_config("24gb")  # bf16 transformer: no bitsandbytes scratch in the terms
    plan = memory.plan_for_config(cfg)
    meas = memory.measurements()["transformer"]["variants"]
    seqs, n_img, n_txt = 2 * plan.train_micro_batch, (512 // 16) ** 2, 77 + 128
    law = memory.law(meas["train_ckpt_kl"], seq_img=seqs * n_img, seq_txt=seqs * n_txt)
    assert plan.phases["train"]["forward + backward"] == int(law)
    assert plan.rollout_bytes == 11 * 16 * 64 * 64 * 4 + 4 * 10 + 16


@pytest.mark.parametrize("preset", ["24gb", "16gb"])
def test_decisions_follow_the_numbers_and_are_monotone_in_vram(preset):
    cfg = build_config(preset)
    previous = (0, 0, 0)
    for vram in [4, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 24, 32, 48, 80]:
        plan = memory.plan_for_config(cfg, vram_gib=vram)
        current = (plan.rollout_cap, plan.sample_micro_batch, plan.train_micro_batch)
        assert all(c >= p for c, p in zip(current, previous)), (vram, previous, current)
        previous = current
        if not plan.fits:
            continue
        assert plan.peak_bytes <= plan.budget
        room = plan.budget - plan.static_bytes - plan.buffer
        for phase, chosen, limit in (("sample", plan.sample_micro_batch, cfg.sampling.micro_batch),
                                     ("train", plan.train_micro_batch, cfg.train.micro_batch)):
            assert plan.phase_bytes(phase) <= room
            if chosen < limit:  # one more row would not have fit
                bigger = memory._phases(cfg, memory._model_facts(cfg), chosen + 1, chosen + 1)
                assert sum(bigger[phase].values()) * (1 + plan.margin) > room
        if cfg.memory.rollout_buffer == "gpu" and plan.rollout_cap < 16 * 12:
            assert plan.sample_micro_batch == plan.train_micro_batch == 1  # R is served first
    assert previous == (16 * 12, cfg.sampling.micro_batch, cfg.train.micro_batch)
    small = memory.plan_for_config(cfg, vram_gib=4)
    assert not small.fits and small.problems


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_fits_its_card_with_headroom(preset):
    cfg = build_config(preset)
    plan = memory.plan_for_config(cfg)
    assert plan.fits, plan.problems
    assert plan.peak_bytes <= 0.90 * vram.CARD_GIB[preset] * GIB
    assert (plan.sample_micro_batch, plan.train_micro_batch) == (cfg.sampling.micro_batch, cfg.train.micro_batch)
    assert plan.rollout_cap == cfg.batch.prompts_per_iter * cfg.superflow.m_max
    if preset == "24gb":
        assert cfg.sampling.resolution == 512 and cfg.sampling.guidance_scale != 1.0
        assert plan.peak_bytes <= 21 * GIB


def test_presets_are_partial_overlays_with_reasons():
    root = Path(memory.__file__).resolve().parent / "presets"
    for preset in PRESETS:
        for line in (root / f"{preset}.yaml").read_text().splitlines():
            stripped = line.strip()
            if ":" in stripped and not stripped.startswith("#") and not stripped.endswith(":"):
                assert "#" in stripped or stripped.startswith(("lora_alpha", "weights")), (preset, line)


def test_cpu_rollout_buffer_uses_no_gpu_memory():
    cfg = build_config("12gb")
    plan = memory.plan_for_config(cfg, host_gib=32)
    assert plan.buffer == 0 and plan.rollout_cap == cfg.batch.prompts_per_iter * cfg.superflow.m_max
    tight = memory.plan_for_config(cfg, host_gib=0.1)  # 25% of 0.1 GiB pinned: 9 rollouts
    assert tight.rollout_cap == int(0.025 * GIB // plan.rollout_bytes) and tight.problems


@pytest.mark.parametrize("preset", PRESETS + ["tiny"])
def test_plan_cli_prints_table_and_exits(preset, capsys):
    from superflow_lite.train import main

    assert main(["--preset", preset, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "rollout cap R" in out and "PREDICTED" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_preset_without_cuda_exits_2(capsys, tmp_path):
    from superflow_lite.train import main

    assert main(["--preset", "24gb", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "24gb" in err and "--preset tiny" in err
    assert not (tmp_path / "run").exists()


def test_auto_preset_by_detected_memory(monkeypatch):
    for gib, preset in [(0.0, "tiny-focus"), (8.0, "tiny-focus"), (11.99, "12gb"), (15.99, "16gb"), (23.99, "24gb"),
                        (44.99, "48gb"), (79.65, "80gb")]:
        monkeypatch.setattr(vram, "detected_vram_gib", lambda v=gib: v)
        assert vram.auto_preset() == preset
    for preset, card in vram.CARD_GIB.items():
        monkeypatch.setattr(vram, "detected_vram_gib", lambda v=card: v)
        assert vram.auto_preset() == preset


def test_rollout_buffer_copy_on_cpu():
    t = torch.randn(2, 3)
    out = rollout.to_rollout_buffer(t, torch.device("cpu"))
    assert torch.equal(out, t)


@pytest.mark.slow
def test_int8_kept_inputs_law_equals_real_width_blocks():
    """bitsandbytes' MatMul8bitLt keeps its inputs outside save_for_backward: the counted law
    equals what a real-width int8 transformer (4 blocks, every block kind) holds after its
    checkpointed forward, at one row (the last block's joint output kept whole) and at two."""
    for point in load_benchmark("measure_activations").int8_kept_check():
        assert point["measured_bytes"] == point["law_bytes"] > 0, point


def test_int8_plan_adds_the_kept_inputs_and_nf4_does_not():
    tc = models.SD35_MEDIUM["transformer"]
    for quant in ("int8", "nf4", "none"):
        cfg = build_config("16gb", None, [f"model.transformer_quant={quant}"])
        plan = memory.plan_for_config(cfg)
        train = plan.phases["train"]
        kept = train.get("int8: Linear inputs kept for backward", 0)
        seqs = 2 * plan.train_micro_batch
        assert kept == (2 * memory.int8_saved_input_elements(tc, 1024, 205, seqs) if quant == "int8" else 0)
        assert all(train.basis[k] in memory.BASES for k in train)
    # per 512-px sequence: 0.65 GiB kept beside the 0.19 GiB bf16 + checkpointing law
    assert 0.64 * GIB < 2 * memory.int8_saved_input_elements(tc, 1024, 205, 1) < 0.66 * GIB


def test_the_plan_names_the_real_device_of_the_rollout_buffer():
    """A CPU run has no GPU: its buffer is in CPU memory whatever memory.rollout_buffer says."""
    tiny = memory.format_plan(build_config("tiny", None, ["memory.rollout_buffer=gpu"]))
    assert "MB on cpu" in tiny and "gpu" not in tiny.split("rollout buffer:")[1].split("\n")[0]
    offloaded = memory.format_plan(build_config("24gb", None, ["memory.rollout_buffer=cpu"]))
    assert "MB on cpu (pinned host memory)" in offloaded
