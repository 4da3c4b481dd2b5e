"""Strict pipeline config: every shipped YAML loads; unknown keys / wrong types name their path."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from mixtune.config import PipelineConfig, Stage1Config, Stage2Config, load_config
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


def test_ifeval_eval_keys_are_bounded_and_misspellings_refused(tmp_path):
    cfg = load_config(ROOT / "examples/finance_risk/pipeline_smollm2.yaml")
    assert cfg.eval.ifeval_prompts == 25 and cfg.eval.ifeval_max_new_tokens == 160
    assert any(g.metric == "ifeval_prompt_loose" and g.scope == "ifeval" and g.min_delta_vs_champion == -0.05
               for g in cfg.gates.validate_)
    assert PipelineConfig().eval.ifeval_prompts == 0  # off unless asked for
    assert PipelineConfig().eval.session_turns == 6 and len(PipelineConfig().eval.experience_scripts) == 4
    for text, needle in (("eval:\n  ifeval_prompts: 542\n", "eval.ifeval_prompts"),
                         ("eval:\n  ifeval_zh_prompts: -1\n", "eval.ifeval_zh_prompts"),
                         ("eval:\n  ifeval_max_new_tokens: 0\n", "eval.ifeval_max_new_tokens"),
                         ("eval:\n  ifeval_prompt: 5\n", "eval.ifeval_prompt"),
                         ("eval:\n  session_turns: -1\n", "eval.session_turns"),
                         ("eval:\n  experience_scripts: [follow_up, smalltalk]\n", "eval.experience_scripts"),
                         ("eval:\n  experience_scripts: []\n", "eval.experience_scripts")):
        with pytest.raises(ConfigError) as e:
            load_config(_write(tmp_path, text))
        assert needle in str(e.value)


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


@pytest.mark.parametrize("key", ["packing: true", "neftune_alpha: 5.0", "consistency: {enabled: true}",
                                 "adversarial: {enabled: true}"])
def test_stage2_refuses_stage1_only_keys(tmp_path, key):
    name = key.split(":")[0]
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, f"stage2:\n  {key}\n"))
    assert f"stage2.{name}" in str(e.value) and "unknown key" in str(e.value)
    load_config(_write(tmp_path, f"stage1:\n  {key}\n"))  # still a stage-1 key


def _fields(model_cls, prefix=""):
    """Dotted leaf key names of a config model (nested models expanded)."""
    out = []
    for name, field in model_cls.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _fields(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _attributes_read(*modules) -> set[str]:
    names = set()
    for m in modules:
        for node in ast.walk(ast.parse(Path(m.__file__).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("stage", [1, 2])
def test_every_stage_key_is_read_by_the_code(stage):
    from mixtune import pipeline
    from mixtune.train import loop, stage1, stage2

    cls = Stage1Config if stage == 1 else Stage2Config
    read = _attributes_read(stage1 if stage == 1 else stage2, loop, pipeline)
    unread = [k for k in _fields(cls) if k.split(".")[-1] not in read]
    assert unread == [], f"stage{stage} keys no code reads: {unread}"


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_config_defaults_are_the_policy_defaults():
    from mixtune.mixing.curriculum import Curriculum
    from mixtune.mixing.factory import make_policy
    from mixtune.mixing.heat import DEFAULT_HEAT_WEIGHTS, PolicyBase
    from mixtune.mixing.modulation import AdaptiveModulation, GroupModulation, make_modulation

    st = Stage2Config()
    for fn in (make_policy, PolicyBase.__init__):
        d = _defaults(fn)
        for k in ("eta", "uniform_mix", "floor", "cap", "ema"):
            assert d[k] == getattr(st.mixing, k), (fn.__qualname__, k)
    assert st.mixing.heat_weights == DEFAULT_HEAT_WEIGHTS
    d = _defaults(Curriculum.__init__)
    for k in ("mastery_threshold", "mastery_cycles", "pacing", "c0"):
        assert d[k] == getattr(st.curriculum, k), k
    # A Curriculum object is on when built; whether the pipeline builds an active one is the
    # pipeline's default, off since the mixing study (issue 11). Same for modulation.
    assert st.curriculum.enabled is False and st.modulation.enabled is False
    for fn in (make_modulation, GroupModulation.__init__, AdaptiveModulation.__init__):
        d = _defaults(fn)
        for k in ("logic_gain", "style_ema", "safety_unlikelihood", "lr"):
            if k in d:
                assert d[k] == getattr(st.modulation, k), (fn.__qualname__, k)


def test_curriculum_and_modulation_settings_reach_the_objects(tmp_path):
    from types import SimpleNamespace

    from mixtune.train.stage2 import Stage2Recipe

    cfg = load_config(_write(tmp_path, (
        "seed: 4\nstage2:\n  curriculum: {enabled: true, pacing: competence, c0: 0.3, thresholds: {calc: 0.6}}\n"
        "  modulation: {enabled: true, method: famo, lr: 0.2, seed: 11}\n")))
    recipe = Stage2Recipe(cfg, [], "unused", tmp_path, business_value={}, groups={}, families={}, chains=[],
                          rejection={}, engine=None, mixing_log=None, max_steps=None, progress=False)
    recipe.acc = SimpleNamespace(num_processes=1, process_index=0)
    recipe.train_samples = [SimpleNamespace(task_id=t, level=1) for t in ("calc", "spread")]
    recipe._setup_mixing()
    cur, mod = recipe.curriculum, recipe.modulation
    assert (cur.pacing, cur.c0, cur.thresholds) == ("competence", 0.3, {"calc": 0.6, "spread": 0.8})
    assert (mod.method, mod.lr, mod.seed) == ("famo", 0.2, 11)
    recipe.cfg = load_config(_write(tmp_path, "seed: 4\nstage2:\n  modulation: {enabled: true, method: uncertainty}\n"))
    recipe.st = recipe.cfg.stage2
    recipe._setup_mixing()
    assert recipe.modulation.seed == 4  # default: the pipeline seed


def test_memory_and_launcher_keys_are_accepted(tmp_path):
    cfg = load_config(_write(tmp_path, (
        "model:\n  dtype: bf16\n  finetune: lora\n  lora: {use_dora: true}\n  quantization: {bits: 4}\n"
        "stage1: {gradient_checkpointing: true, lr: 0}\n"
        "stage2:\n  gradient_checkpointing: true\n"
        "  launcher: {profile: deepspeed_zero3, num_processes: 2, deepspeed_config: ds.json}\n")))
    assert cfg.model.dtype == "bf16" and cfg.model.lora.use_dora and cfg.model.quantization.bits == 4
    assert cfg.stage1.gradient_checkpointing and cfg.stage1.lr == 0 and cfg.stage2.gradient_checkpointing
    assert cfg.stage2.launcher.deepspeed_config == "ds.json"
    assert PipelineConfig().model.dtype == "auto" and PipelineConfig().model.quantization is None
    with pytest.raises(ConfigError, match="model.quantization.bits"):
        load_config(_write(tmp_path, "model:\n  quantization: {bits: 8}\n"))
