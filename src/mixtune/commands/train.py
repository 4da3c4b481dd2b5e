"""``mixtune train --stage 1|2 PIPELINE.yaml``: one training stage of a run, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from mixtune.errors import MixtuneError


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Path = typer.Argument(..., help="pipeline YAML"),
        overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. stage1.steps=20"),
        stage: int = typer.Option(1, "--stage", min=1, max=2, help="which stage to train"),
        model: str = typer.Option(None, "--model", help="start from this model (HF folder/id, gguf:PATH or a preset) instead of the run's previous one"),
        out: Path = typer.Option(None, "--out", help="output folder (default runs/<name>/stage<N>)"),
        max_steps: int = typer.Option(None, "--max-steps", help="stop after this many steps"),
        debug: bool = typer.Option(False, "--debug", help="print which tokens carry labels for a few samples and exit"),
    ) -> None:
        """Train stage 1 or 2 of the run; needs the run's data (mixtune data build / mixtune run --until data).

        Re-running resumes from the newest intact checkpoint under <out>/checkpoints.
        """
        # Imported here, not at module level: the CLI imports every command module at start-up and
        # these pull in torch, transformers and accelerate (``mixtune --help`` must stay instant).
        from transformers import AutoTokenizer

        from mixtune.config import apply_runtime, load_config
        from mixtune.pipeline import (
            load_samples,
            ontology_maps,
            rejection_rates,
            rule_engine,
            step_base_model,
        )
        from mixtune.rundir import RunDir
        from mixtune.train.collate import debug_view, encode_conversation
        from mixtune.train.stage1 import train_stage1
        from mixtune.train.stage2 import train_stage2

        cfg = load_config(config, overrides or [])
        apply_runtime(cfg)
        rd = RunDir(cfg)
        if not (rd.path / "data" / "samples.parquet").is_file():
            raise MixtuneError("no dataset in this run yet; run `mixtune run CONFIG --until data` first",
                               where=str(rd.path / "data"))
        samples = load_samples(rd)
        if model:
            from mixtune.model.sources import resolve_model

            start = resolve_model(model)  # an HF folder/id, gguf:PATH or a preset name
        else:
            start = step_base_model(cfg, rd, samples) if stage == 1 else str(rd.path / "stage1" / "model")
        if debug:
            tok = AutoTokenizer.from_pretrained(start)
            for s in [x for x in samples if x.stage == stage][:3]:
                enc = encode_conversation(tok, [m.model_dump() for m in s.messages], 512, s.instruction)
                typer.echo(f"--- {s.task_id} ({s.id}): [label] <instruction> ·prompt·")
                typer.echo(debug_view(tok, enc))
            return
        out_dir = out or rd.path / f"stage{stage}"
        if stage == 1:
            path = train_stage1(cfg, [s for s in samples if s.stage == 1], start, out_dir, max_steps=max_steps)
        else:
            onto, value, groups, families = ontology_maps(cfg)
            path = train_stage2(cfg, samples, start, out_dir, business_value=value, groups=groups,
                                families=families, chains=[list(c.steps) for c in onto.chains.values()],
                                rejection=rejection_rates(rd), engine=rule_engine(cfg), max_steps=max_steps)
        typer.echo(f"saved {path}")
