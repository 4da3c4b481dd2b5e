"""Strict pipeline config: every shipped YAML loads; unknown keys / wrong types name their path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixtune.config import PipelineConfig, load_config
from mixtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def _loader_for(path: Path):
    """Pick the strict loader a YAML belongs to by its role in the example."""
    name = path.name
    if name == "pipeline.yaml" or "pipeline" in name:
        return lambda p: load_config(p)
    if name.startswith("ontology"):
        from mixtune.data.ontology import load_ontology

        return load_ontology
    if name.startswith("rules"):
        from mixtune.rules import RuleSet

        return RuleSet.load
    if name.startswith("gates"):
        from mixtune.release.gates import load_gate_file

        return load_gate_file
    return lambda p: yaml.safe_load(Path(p).read_text(encoding="utf-8"))


def test_examples_exist():
    assert any(p.name == "pipeline.yaml" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_every_example_yaml_loads(path):
    assert _loader_for(path)(path) is not None


def test_demo_config_resolves_relative_paths():
    cfg = load_config(ROOT / "examples/finance_risk/pipeline.yaml")
    assert cfg.resolve(cfg.data.ontology).is_file()
    assert cfg.resolve(cfg.data.rules).is_file()
    assert cfg.run_dir().name == cfg.name


def _write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "stage1:\n  clip:\n    strat: 3\n"))
    assert "stage1.clip.strat" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_and_literal_name_path_and_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "stage2:\n  mixing:\n    method: magic\n"))
    assert "stage2.mixing.method" in str(e.value) and "heat" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "stage1:\n  steps: many\n"))
    assert "stage1.steps" in str(e.value)


def test_overrides_apply_and_are_validated(tmp_path):
    p = _write(tmp_path, "name: a\n")
    cfg = load_config(p, ["stage1.steps=7", "stage2.mixing.method=exp3", "model.finetune=lora"])
    assert cfg.stage1.steps == 7 and cfg.stage2.mixing.method == "exp3" and cfg.model.finetune == "lora"
    with pytest.raises(ConfigError, match="stage1.nope"):
        load_config(p, ["stage1.nope=1"])
    with pytest.raises(ConfigError, match="a.b.c=value"):
        load_config(p, ["stage1.steps"])


def test_broken_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"p\.yaml:3"):
        load_config(_write(tmp_path, "a: 1\nb: [1, 2\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_fingerprint_tracks_sections():
    a, b = PipelineConfig(), PipelineConfig()
    b.stage2.steps = 3
    assert a.fingerprint("stage1") == b.fingerprint("stage1")
    assert a.fingerprint("stage2") != b.fingerprint("stage2")


def test_missing_tracker_package_is_a_clear_error():
    import importlib.util

    from mixtune.errors import MixtuneError
    from mixtune.train.common import check_trackers

    missing = [t for t in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(t) is None]
    if not missing:  # every tracker installed: nothing can be missing here
        check_trackers(["tensorboard"], "stage1.trackers")
        return
    with pytest.raises(MixtuneError, match=f"stage1.trackers: tracker '{missing[0]}' needs"):
        check_trackers([missing[0]], "stage1.trackers")
