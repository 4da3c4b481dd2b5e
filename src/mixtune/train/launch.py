"""Per-stage launcher profiles: single process, DDP, FSDP, DeepSpeed ZeRO-2/3.

A stage whose ``launcher.profile`` is not ``single`` (or asks for more than one process) is run as
``accelerate launch --config_file <profile> mixtune train --stage N CONFIG``, so stage 1 and stage 2
can use differently sized resources. The profile files are plain accelerate configs written into
the run directory (``launch/stageN.yaml``): users can inspect them or launch by hand. Multi-node
works the same way through torchrun rendezvous (see docs/distributed.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mixtune.errors import MixtuneError


def accelerate_config(profile: str, num_processes: int, mixed_precision: str, use_cpu: bool) -> dict:
    """An accelerate config dict for a named profile."""
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
    if profile in ("deepspeed_zero2", "deepspeed_zero3"):
        stage = 2 if profile.endswith("2") else 3
        return {**base, "distributed_type": "DEEPSPEED", "deepspeed_config": {
            "zero_stage": stage, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
            "offload_optimizer_device": "none", "offload_param_device": "none",
            "zero3_init_flag": stage == 3, "zero3_save_16bit_model": stage == 3}}
    raise MixtuneError(f"unknown launcher profile {profile!r}", where="launcher.profile")


def write_profile(run_dir: Path, stage: int, profile: str, num_processes: int, precision: str) -> Path:
    out = run_dir / "launch" / f"stage{stage}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = accelerate_config(profile, num_processes, precision, use_cpu=False)
    if not torch.cuda.is_available() and profile.startswith(("fsdp", "deepspeed")):
        raise MixtuneError(f"profile {profile!r} needs CUDA GPUs; use 'ddp' (gloo) on CPU", where="launcher.profile")
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
