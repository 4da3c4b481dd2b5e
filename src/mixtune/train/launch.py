"""Per-stage launcher profiles: single process, DDP, FSDP, DeepSpeed ZeRO-2/3.

A stage whose ``launcher.profile`` is not ``single`` (or asks for more than one process) is run as
``accelerate launch --config_file <profile> mixtune train --stage N CONFIG``, so stage 1 and stage 2
can use differently sized resources. The profile files are plain accelerate configs written into
the run directory (``launch/stageN.yaml``): users can inspect them or launch by hand. Under
DeepSpeed the engine owns clipping and the optimizer step, so options that need the loop between
backward and step are refused before launch (:func:`check_engine_owned_options`). Multi-node
works the same way through torchrun rendezvous (see docs/distributed.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mixtune.errors import MixtuneError

DEEPSPEED_PROFILES = ("deepspeed_zero2", "deepspeed_zero3")


def check_engine_owned_options(stage: int, profile: str, *, clip_policy: str, style_ema: float = 0.0) -> None:
    """Refuse options the DeepSpeed engine takes over from the training loop, naming the option.

    Under DeepSpeed, accelerate's ``backward()`` runs the engine's step: the gradients are clipped
    with one fixed ``gradient_clipping`` and the optimizer steps before the loop could touch them,
    so a clip threshold that changes every step and the style-EMA gradient rewrite cannot run.
    ``style_ema`` is the effective one (0 when stage 2's modulation does not rewrite gradients).
    """
    if not profile.startswith("deepspeed"):
        return
    if clip_policy in ("decay", "zclip"):
        raise MixtuneError(f"clip policy {clip_policy!r} sets a new threshold every step, but the DeepSpeed "
                           f"engine clips with one fixed value; use 'constant' or 'none' under {profile}, or "
                           "the fsdp/ddp profile", where=f"stage{stage}.clip.policy")
    if style_ema > 0:
        raise MixtuneError(f"the style-EMA gradient rewrite runs between backward and the optimizer step, which "
                           f"the DeepSpeed engine fuses; set stage2.modulation.style_ema: 0 (or method famo / "
                           f"uncertainty) under {profile}, or use the fsdp/ddp profile",
                           where="stage2.modulation.style_ema")


def user_deepspeed_config(path: Path, out: Path, where: str, grad_accum: int = 1) -> Path:
    """Validate a user's DeepSpeed JSON or YAML and write it as JSON to ``out`` (what the run used).

    Its accumulation must match the stage's: the loop normalises every step's loss over
    ``grad_accum`` micro-batches, and the engine steps every ``gradient_accumulation_steps``.
    """
    if not path.is_file():
        raise MixtuneError("DeepSpeed config file not found", where=f"{where}: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MixtuneError(f"DeepSpeed config is neither JSON nor YAML: {str(e).splitlines()[0]}",
                           where=f"{where}: {path}") from None
    if not isinstance(data, dict):
        raise MixtuneError("DeepSpeed config must be a mapping", where=f"{where}: {path}")
    gas = data.get("gradient_accumulation_steps", "auto")
    if gas != grad_accum and not (gas == "auto" and grad_accum == 1):
        raise MixtuneError(f"gradient_accumulation_steps is {gas!r} but the stage's grad_accum is {grad_accum}; "
                           "set them equal", where=f"{where}: {path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return out


def accelerate_config(profile: str, num_processes: int, mixed_precision: str, use_cpu: bool, *,
                      grad_accum: int = 1, clip_policy: str = "constant", clip_value: float = 1.0,
                      deepspeed_file: Path | None = None) -> dict:
    """An accelerate config dict for a named profile.

    DeepSpeed takes ``gradient_accumulation_steps`` and ``gradient_clipping`` from the stage
    (``clip.start`` for a constant policy, 0 = off for ``none``), or everything from ``deepspeed_file``.
    """
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[mixed_precision]
    base = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "machine_rank": 0,
            "num_processes": num_processes, "mixed_precision": mp, "use_cpu": use_cpu,
            "main_training_function": "main", "rdzv_backend": "static", "same_network": True}
    if profile == "single":
        return {**base, "distributed_type": "NO", "num_processes": 1}
    if profile == "ddp":
        # On a machine without CUDA, MULTI_GPU with use_cpu=False still starts gloo processes: the loop
        # itself selects the CPU (Accelerator(cpu=True)); MULTI_CPU would require Intel MPI/oneCCL.
        return {**base, "distributed_type": "MULTI_GPU"}
    if profile == "fsdp":
        return {**base, "distributed_type": "FSDP", "fsdp_config": {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True}}
    if profile in DEEPSPEED_PROFILES:
        stage = 2 if profile.endswith("2") else 3
        if deepspeed_file is not None:
            return {**base, "distributed_type": "DEEPSPEED", "deepspeed_config": {
                "deepspeed_config_file": str(deepspeed_file), "zero3_init_flag": stage == 3}}
        return {**base, "distributed_type": "DEEPSPEED", "deepspeed_config": {
            "zero_stage": stage, "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": clip_value if clip_policy == "constant" else 0.0,
            "offload_optimizer_device": "none", "offload_param_device": "none",
            "zero3_init_flag": stage == 3, "zero3_save_16bit_model": stage == 3}}
    raise MixtuneError(f"unknown launcher profile {profile!r}", where="launcher.profile")


def write_profile(run_dir: Path, stage: int, profile: str, num_processes: int, precision: str, *,
                  grad_accum: int = 1, clip_policy: str = "constant", clip_value: float = 1.0,
                  style_ema: float = 0.0, deepspeed_config: Path | None = None) -> Path:
    """Check the stage's options against the profile and write its accelerate config (``launch/stageN.yaml``)."""
    where = f"stage{stage}.launcher.deepspeed_config"
    if deepspeed_config is not None and profile not in DEEPSPEED_PROFILES:
        raise MixtuneError(f"a DeepSpeed config needs a deepspeed profile, not {profile!r}", where=where)
    check_engine_owned_options(stage, profile, clip_policy=clip_policy, style_ema=style_ema)
    ds_file = None if deepspeed_config is None else user_deepspeed_config(
        deepspeed_config, run_dir / "launch" / f"stage{stage}.deepspeed.json", where, grad_accum)
    cfg = accelerate_config(profile, num_processes, precision, use_cpu=False, grad_accum=grad_accum,
                            clip_policy=clip_policy, clip_value=clip_value, deepspeed_file=ds_file)
    if not torch.cuda.is_available() and profile.startswith(("fsdp", "deepspeed")):
        raise MixtuneError(f"profile {profile!r} needs CUDA GPUs; use 'ddp' (gloo) on CPU", where="launcher.profile")
    out = run_dir / "launch" / f"stage{stage}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def launch_stage(stage: int, config_path: Path, profile_path: Path, num_processes: int, port: int = 29531) -> None:
    """Run ``mixtune train --stage N`` under accelerate launch; raise on a non-zero exit."""
    main = Path(__file__).resolve().parents[1] / "__main__.py"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(profile_path),
           "--num_processes", str(num_processes), "--main_process_port", str(port),
           str(main), "train", str(config_path), "--stage", str(stage)]
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise MixtuneError(f"distributed stage {stage} failed with exit code {res.returncode}",
                           where=" ".join(cmd[:6]) + " ...")
