"""DeepSpeed/FSDP launch: generated configs, user configs, refusals of engine-owned options, gathered saves."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from mixtune.config import PipelineConfig
from mixtune.errors import MixtuneError
from mixtune.pipeline import launch_if_distributed
from mixtune.train.launch import accelerate_config, user_deepspeed_config, write_profile
from mixtune.train.loop import engine_loss_factor, micro_batch_context, refuse_engine_owned_options


def test_generated_deepspeed_config_takes_accumulation_and_clipping_from_the_stage():
    ds = accelerate_config("deepspeed_zero3", 2, "bf16", False, grad_accum=4, clip_policy="constant",
                           clip_value=0.7)["deepspeed_config"]
    assert ds["zero_stage"] == 3 and ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.7
    off = accelerate_config("deepspeed_zero2", 2, "bf16", False, clip_policy="none")["deepspeed_config"]
    assert off["gradient_clipping"] == 0.0 and off["zero_stage"] == 2


def test_user_deepspeed_yaml_replaces_the_generated_config(tmp_path):
    user = tmp_path / "ds.yaml"
    user.write_text("zero_optimization: {stage: 3, overlap_comm: true}\ngradient_clipping: 0.3\n"
                    "train_micro_batch_size_per_gpu: auto\n")
    out = user_deepspeed_config(user, tmp_path / "run" / "launch" / "stage2.deepspeed.json", "stage2.launcher")
    assert json.loads(out.read_text())["zero_optimization"]["overlap_comm"] is True
    cfg = accelerate_config("deepspeed_zero3", 2, "bf16", False, grad_accum=8, deepspeed_file=out)
    assert cfg["deepspeed_config"] == {"deepspeed_config_file": str(out), "zero3_init_flag": True}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(MixtuneError, match="mapping"):
        user_deepspeed_config(tmp_path / "bad.json", tmp_path / "x.json", "stage1.launcher.deepspeed_config")
    with pytest.raises(MixtuneError, match="not found") as e:
        user_deepspeed_config(tmp_path / "nope.json", tmp_path / "x.json", "stage1.launcher.deepspeed_config")
    assert "stage1.launcher.deepspeed_config" in e.value.where


@pytest.mark.parametrize(("overrides", "stage", "where"), [
    ({"stage1": {"clip": {"policy": "decay"}}}, 1, "stage1.clip.policy"),
    ({"stage1": {"clip": {"policy": "zclip"}}}, 1, "stage1.clip.policy"),
    ({"stage2": {"clip": {"policy": "constant"}, "modulation": {"enabled": True}}}, 2,
     "stage2.modulation.style_ema"),  # groups modulation, EMA 0.9
])
def test_engine_owned_options_are_refused_at_launch(tmp_path, overrides, stage, where):
    key = f"stage{stage}"
    overrides[key]["launcher"] = {"profile": "deepspeed_zero2", "num_processes": 2}
    cfg = PipelineConfig.model_validate(overrides)
    with pytest.raises(MixtuneError) as e:
        launch_if_distributed(cfg, SimpleNamespace(path=tmp_path), stage)
    assert e.value.where == where and "DeepSpeed" in str(e.value)
    assert not (tmp_path / "launch" / f"{key}.yaml").exists()


def test_deepspeed_compatible_stage2_passes_the_checks(tmp_path):
    cfg = PipelineConfig.model_validate({"stage2": {
        "clip": {"policy": "constant"}, "modulation": {"style_ema": 0.0},
        "launcher": {"profile": "deepspeed_zero3", "num_processes": 2}}})
    # On CPU the options pass and only the missing GPUs are refused; on CUDA the profile is written.
    with pytest.raises(MixtuneError, match="needs CUDA") if not torch.cuda.is_available() else nullcontext():
        write_profile(tmp_path, 2, "deepspeed_zero3", 2, "bf16", clip_policy=cfg.stage2.clip.policy, style_ema=0.0)
    with pytest.raises(MixtuneError, match="deepspeed profile") as e:
        write_profile(tmp_path, 1, "fsdp", 2, "bf16", deepspeed_config=Path("ds.json"))
    assert e.value.where == "stage1.launcher.deepspeed_config"


def test_stage_started_by_hand_under_deepspeed_refuses_too():
    ds = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(MixtuneError) as e:
        refuse_engine_owned_options(ds, 2, "constant", style_ema=0.9)
    assert e.value.where == "stage2.modulation.style_ema"
    refuse_engine_owned_options(SimpleNamespace(distributed_type=DistributedType.FSDP), 1, "zclip", 0.9)


def test_checkpoints_and_final_save_use_the_gathered_state_dict(tmp_path, monkeypatch):
    from helpers.synth import corpus, make_samples

    from mixtune.model.tiny import make_test_model
    from mixtune.train.stage1 import train_stage1

    calls = []
    gather = Accelerator.get_state_dict

    def spy(self, model, unwrap=True):
        state = gather(self, model, unwrap)
        calls.append(len(state))
        return {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in state.items()}  # marks what is saved

    monkeypatch.setattr(Accelerator, "get_state_dict", spy)
    samples = make_samples(twins=False)
    base = make_test_model(tmp_path / "base", corpus(samples))
    cfg = PipelineConfig.model_validate({"stage1": {"steps": 2, "batch_size": 4, "checkpoint_every": 1,
                                                    "precision": "fp32", "eval_every": 100}})
    out = train_stage1(cfg, samples, str(base), tmp_path / "s1", progress=False)
    assert len(calls) == 3  # two checkpoints and the final save
    from safetensors.torch import load_file

    final = load_file(str(out / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "s1" / "checkpoints" / "step-00000002" / "model.safetensors"))
    name = next(k for k in final if k.endswith("norm.weight"))
    assert final[name].mean().item() > 1.5 and ckpt[name].mean().item() > 1.5  # norm weights start at 1


def test_user_deepspeed_accumulation_must_match_the_stage(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"gradient_accumulation_steps": 2}))
    with pytest.raises(MixtuneError, match="grad_accum is 4"):
        user_deepspeed_config(user, tmp_path / "o.json", "stage1.launcher.deepspeed_config", grad_accum=4)
    assert user_deepspeed_config(user, tmp_path / "o.json", "w", grad_accum=2).is_file()
    user.write_text("{}")  # "auto" is filled with 1 by accelerate
    with pytest.raises(MixtuneError, match="gradient_accumulation_steps"):
        user_deepspeed_config(user, tmp_path / "o.json", "w", grad_accum=2)


def test_deepspeed_accumulation_boundary_and_loss_factor_follow_the_micro_batches():
    flags = []
    ds = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, no_sync=lambda model: nullcontext(),
                         gradient_state=SimpleNamespace(_set_sync_gradients=flags.append))
    for m in range(3):
        with micro_batch_context(ds, None, last=m == 2):
            pass
    assert flags == [False, False, True]  # the engine steps once, after the last micro-batch
    assert engine_loss_factor(ds, 3) == 3  # the engine divides by its accumulation steps: undone
    assert engine_loss_factor(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), 3) == 1
