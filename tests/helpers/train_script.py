"""Run stage 1 on synthetic samples in its own process (resume and DDP tests).

usage: python train_script.py BASE_MODEL OUT_DIR STEPS [key=value ...]
Set MIXTUNE_TEST_SLOW=1 to sleep after every step so a parent can kill the run mid-way.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.synth import make_samples  # noqa: E402
from mixtune.config import PipelineConfig, apply_overrides  # noqa: E402
from mixtune.train import stage1  # noqa: E402


def main() -> None:
    base, out, steps, *over = sys.argv[1:]
    data = {"seed": 3, "stage1": {"steps": int(steps), "batch_size": 8, "eval_every": 1000, "checkpoint_every": 10,
                                  "precision": "fp32", "keep_checkpoints": 3}}
    cfg = PipelineConfig.model_validate(apply_overrides(data, over))
    if os.environ.get("MIXTUNE_TEST_SLOW"):
        write = stage1.MetricsWriter.write

        def slow_write(self, record):
            write(self, record)
            time.sleep(0.05)

        stage1.MetricsWriter.write = slow_write
    stage1.train_stage1(cfg, make_samples(), base, Path(out), progress=False)


if __name__ == "__main__":
    main()
