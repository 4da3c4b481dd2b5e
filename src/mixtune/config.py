"""Pipeline configuration: strict pydantic v2 models loaded from YAML with dotted overrides.

Only stage entry points see these objects; components take flat typed arguments. Every model
forbids unknown keys so a typo fails loudly with its key path instead of being ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from mixtune.errors import ConfigError
from mixtune.mixing import curriculum, heat, modulation


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Strict):
    """Shape of the built-in Llama-architecture model (used when model.name_or_path == 'builtin:tiny')."""

    vocab_size: int = Field(3000, ge=300)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(352, ge=16)
    num_hidden_layers: int = Field(3, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(512, ge=64)


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    use_dora: bool = Field(False, description="weight-decomposed LoRA (peft's use_dora)")


class QuantizationConfig(Strict):
    """QLoRA: the frozen base in 4-bit (bitsandbytes, CUDA only; pip install 'mixtune[qlora]')."""

    bits: Literal[4] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"


class ModelConfig(Strict):
    name_or_path: str = "builtin:tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    finetune: Literal["full", "lora"] = "full"
    lora: LoraConfig = LoraConfig()
    merge_adapter: bool = Field(False, description="also save a merged full model next to the adapter")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="weight dtype: auto = bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU; "
                            "trainable LoRA parameters are always fp32")
    quantization: QuantizationConfig | None = Field(None, description="e.g. {bits: 4} for QLoRA (needs lora, CUDA)")
    trust_remote_code: bool = False


class DataConfig(Strict):
    ontology: str = "ontology.yaml"
    rules: str = "rules.yaml"
    sources: list[SourceConfig] = Field(
        default_factory=list, description="extra jsonl/parquet/csv files to ingest: a path, or a mapping with "
        "path, field_map, default_task and task_from (paths relative to the YAML file)")
    generate: bool = True
    n_per_task: int = Field(300, ge=1)
    defect_rate: float = Field(0.05, ge=0.0, le=0.5)
    value_pool: int = Field(0, ge=0, description="generated figures drawn from this many values per range (0 = any)")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    perturb_fraction: float = Field(0.3, ge=0.0, le=1.0)
    require_review: bool = Field(False, description="train only on samples an expert approved")
    auto_approve_reviewer: str | None = Field("generator", description="reviewer id recorded for generated samples")


class TaskFromConfig(Strict):
    """Where an ingested record's task id comes from: a column, optionally mapped value → task id.

    Written as a plain column name or as ``{column: c, map: {value: task_id}}``; with a map, a value
    not in it is quarantined rather than guessed.
    """

    column: str = Field(min_length=1)
    map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_column_name(cls, v: Any) -> Any:
        return {"column": v} if isinstance(v, str) else v

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any) -> Any:
        return self.column if not self.map else handler(self)


class SourceConfig(Strict):
    """One ``data.sources`` entry: a path string, or a mapping that also says how to read it.

    ``field_map`` renames source columns to sample fields (``{output: response}``); ``default_task``
    is the task id for records without one; ``task_from`` takes it from a column instead.
    """

    path: str = Field(min_length=1)
    field_map: dict[str, str] = Field(default_factory=dict)
    default_task: str | None = None
    task_from: TaskFromConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any) -> Any:
        # a bare path dumps as the string it was written as, so existing configs keep their fingerprint
        plain = not self.field_map and self.default_task is None and self.task_from is None
        return self.path if plain else handler(self)


class ClipConfig(Strict):
    policy: Literal["none", "constant", "decay", "zclip"] = "decay"
    schedule: Literal["linear", "cosine", "exponential"] = "cosine"
    start: float = Field(5.0, gt=0)
    end: float = Field(1.0, gt=0)
    zclip_z: float = Field(2.5, gt=0)
    zclip_alpha: float = Field(0.97, gt=0, lt=1)


class ConsistencyConfig(Strict):
    enabled: bool = True
    weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.1, gt=0)


class AdversarialConfig(Strict):
    enabled: bool = True
    weight: float = Field(0.1, ge=0)
    share: float = Field(0.5, ge=0, le=1, description="fraction of steps that pay for the twin forward")


class LauncherConfig(Strict):
    profile: Literal["single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = "single"
    num_processes: int = Field(1, ge=1)
    deepspeed_config: str | None = Field(None, description="your DeepSpeed JSON/YAML, replacing the generated "
                                                           "one (deepspeed profiles only)")


class BaseStageConfig(Strict):
    """Keys both stages read; :class:`Stage1Config` and :class:`Stage2Config` add their own."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, ge=0, description="0 freezes the weights (e.g. to check what a stage saves)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_len: int = Field(192, ge=16)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    eval_every: int = Field(50, ge=1)
    eval_samples_per_task: int = Field(16, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    clip: ClipConfig = ClipConfig()
    launcher: LauncherConfig = LauncherConfig()
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)


class Stage1Config(BaseStageConfig):
    """Stage 1 (instruction-structure alignment): adds packing, NEFTune, SupCon and twin-KL."""

    packing: bool = False
    neftune_alpha: float = Field(0.0, ge=0)
    consistency: ConsistencyConfig = ConsistencyConfig()
    adversarial: AdversarialConfig = AdversarialConfig()


class MixingConfig(Strict):
    method: Literal["heat", "uniform", "static", "dbl", "exp3", "natural", "temperature"] = "heat"
    eta: float = Field(heat.DEFAULT_ETA, ge=0)
    uniform_mix: float = Field(heat.DEFAULT_UNIFORM_MIX, ge=0, le=1)
    floor: float = Field(heat.DEFAULT_FLOOR, ge=0, lt=1)
    cap: float = Field(heat.DEFAULT_CAP, gt=0, le=1)
    ema: float = Field(heat.DEFAULT_EMA, ge=0, lt=1)
    heat_weights: dict[str, float] = Field(default_factory=lambda: dict(heat.DEFAULT_HEAT_WEIGHTS))


# Curriculum and modulation are off by default: the mixing study (issue 11, BENCHMARKS.md) found heat
# weights alone beat every simple baseline's worst task, and each of the two cost worst-task score.
class CurriculumConfig(Strict):
    enabled: bool = Field(False, description="difficulty curriculum (off by default: see the mixing study)")
    early: list[float] = Field(default_factory=lambda: list(curriculum.DEFAULT_EARLY))
    middle: list[float] = Field(default_factory=lambda: list(curriculum.DEFAULT_MIDDLE))
    late: list[float] = Field(default_factory=lambda: list(curriculum.DEFAULT_LATE))
    pacing: Literal["thirds", "linear", "competence"] = Field(
        curriculum.DEFAULT_PACING, description="how early/middle/late blend over training progress")
    c0: float = Field(curriculum.DEFAULT_C0, gt=0, lt=1, description="initial competence (pacing: competence)")
    mastery_threshold: float = Field(curriculum.DEFAULT_MASTERY_THRESHOLD, ge=0, le=1)
    mastery_cycles: int = Field(curriculum.DEFAULT_MASTERY_CYCLES, ge=1)
    thresholds: dict[str, float] = Field(default_factory=dict,
                                         description="per-task mastery thresholds overriding mastery_threshold")


class ModulationConfig(Strict):
    enabled: bool = Field(False, description="per-group gradient modulation (off by default: see the mixing study)")
    method: Literal["groups", "famo", "uncertainty"] = "groups"
    logic_gain: float = Field(modulation.DEFAULT_LOGIC_GAIN, gt=0)
    style_ema: float = Field(modulation.DEFAULT_STYLE_EMA, ge=0, lt=1)
    safety_unlikelihood: float = Field(modulation.DEFAULT_SAFETY_UNLIKELIHOOD, ge=0)
    lr: float = Field(modulation.DEFAULT_ADAPTIVE_LR, gt=0, description="step size of famo / uncertainty")
    seed: int | None = Field(None, description="seed of famo / uncertainty (default: the pipeline seed)")


class Stage2Config(BaseStageConfig):
    """Stage 2 (multi-task co-optimisation): adds mixing, curriculum, modulation, context orchestration."""

    mixing: MixingConfig = MixingConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    modulation: ModulationConfig = ModulationConfig()
    context_orchestration: bool = True


class GateSpec(Strict):
    metric: str
    scope: str = Field("overall", description="'overall', a task family or a task id")
    min: float | None = None
    max: float | None = None
    min_delta_vs_champion: float | None = None
    greater_is_better: bool = True


class ShadowConfig(Strict):
    """Offline canary: held-out prompts replayed as shadow traffic against champion and candidate."""

    enabled: bool = True
    traffic_per_task: int = Field(4, ge=1, description="held-out prompts per task replayed as traffic")
    min_delta: float = Field(0.0, description="required composite improvement (negative = non-inferiority margin)")
    alpha: float = Field(0.05, gt=0, lt=1, description="sequential test error rate")
    min_pairs: int = Field(10, ge=1)
    max_new_tokens: int = Field(96, ge=1)


class RolloutAnalysisConfig(Strict):
    """How each rollout step is judged (pass / fail / inconclusive); see docs/rollout.md."""

    min_pairs: int = Field(6, ge=1, description="scored champion/candidate pairs a step needs to decide")
    min_delta: float = Field(-0.05, description="composite quality: candidate - champion must reach this "
                             "(negative = non-inferiority margin)")
    alpha: float = Field(0.05, gt=0, lt=1, description="sequential test error rate (anytime-valid across steps)")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="candidate failed calls above this fail the step")
    max_latency_p95_ratio: float = Field(3.0, gt=0, description="candidate p95 may be this many times the champion's")
    latency_slack_ms: float = Field(250.0, ge=0, description="... plus this many milliseconds")
    max_thumbs_down_increase: float = Field(0.25, ge=0, le=1,
                                            description="simulated users' thumbs-down rate, candidate minus champion")
    min_feedback: int = Field(4, ge=1, description="feedback events per arm before the feedback check decides")
    expert_pairs: int = Field(4, ge=0, description="answer pairs per step given to the (simulated) expert reviewer")


class RolloutConfig(Strict):
    """Staged rollout in the canary step: real `mixtune serve` processes behind `mixtune gateway`."""

    enabled: bool = True
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0],
                               description="canary share of users per step, in percent, increasing")
    requests_per_step: int = Field(24, ge=1, description="held-out traffic requests per step")
    sessions_per_step: int = Field(2, ge=0, description="simulated-user sessions per step")
    session_turns: int = Field(3, ge=1)
    feedback_noise: float = Field(0.05, ge=0, le=0.5)
    max_new_tokens: int = Field(32, ge=1)
    concurrency: int = Field(4, ge=1, description="requests in flight against the gateway")
    startup_timeout: float = Field(180.0, gt=0, description="seconds a server may take to come up")
    shutdown_timeout: float = Field(15.0, gt=0, description="seconds after SIGTERM before SIGKILL")
    canary_timeout: float = Field(20.0, gt=0, description="seconds before a canary answer falls back")
    analysis: RolloutAnalysisConfig = RolloutAnalysisConfig()

    @model_validator(mode="after")
    def _increasing(self) -> RolloutConfig:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing percentages in (0, 100], got {self.steps}")
        return self


class GatesConfig(Strict):
    validate_: list[GateSpec] = Field(default_factory=list, alias="validate")
    canary: list[GateSpec] = Field(default_factory=list, description="checks on the evaluation records")
    shadow: ShadowConfig = ShadowConfig()
    rollout: RolloutConfig = RolloutConfig()
    bootstrap_samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


EVAL_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class EndpointConfig(Strict):
    """An OpenAI-compatible server (vLLM, ``mixtune serve``, ...) that serves one evaluated model."""

    url: str = Field(pattern=r"^https?://", description="base URL, with or without /v1")
    model: str | None = Field(None, description="served model name (default: the one the server lists)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")


class EvalConfig(Strict):
    models: list[Literal["base", "stage1", "stage2"]] = Field(default_factory=lambda: ["base", "stage1", "stage2"])
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(32, ge=1)
    device: str = Field("auto", description="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N or mps; "
                                            "also used by the shadow replay")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on CUDA (fp16 without bf16 support), fp32 on CPU")
    backend: Literal["local", "openai"] = Field(
        "local", description="local: load each model; openai: query eval.endpoints (e.g. vLLM) instead")
    endpoints: dict[Literal["base", "stage1", "stage2"], EndpointConfig] = Field(
        default_factory=dict, description="backend openai: one endpoint per evaluated model")
    concurrency: int = Field(4, ge=1, description="backend openai: requests in flight per endpoint")
    timeout: float = Field(120.0, gt=0, description="backend openai: seconds per request")
    samples_per_task: int = Field(20, ge=1)
    experience_per_task: int = Field(2, ge=0)
    experience: bool = True
    experience_scripts: list[Literal["follow_up", "contradiction", "vague", "perturbed_repeat"]] = Field(
        default_factory=lambda: ["follow_up", "contradiction", "vague", "perturbed_repeat"], min_length=1,
        description="scripted stress dialogues of the experience layer (one generation pass for all of them)")
    session_turns: int = Field(6, ge=0, description=(
        "turns of the experience layer's adaptive simulated-user sessions (0 = scripted dialogues only); "
        "each turn is one more generation pass per evaluated model"))
    ifeval_prompts: int = Field(0, ge=0, le=541, description=(
        "English IFEval prompts in the base layer (0 = none): a fixed subset of the 541 shipped prompts, "
        "stratified by instruction type and seeded by `seed`, the same for every model; 25 covers each type once"))
    ifeval_zh_prompts: int = Field(0, ge=0, le=541, description=(
        "Chinese IFEval prompts (Marco-Bench-MIF, shipped) in the base layer, chosen the same way"))
    ifeval_max_new_tokens: int = Field(192, ge=1, description=(
        "generation budget of an IFEval answer (its essays and paragraph counts need more room than a domain answer)"))

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not EVAL_DEVICE.match(v.strip().lower()):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {v!r})")
        return v.strip().lower()

    @model_validator(mode="after")
    def _endpoints_cover_models(self) -> EvalConfig:
        if self.backend == "openai":
            missing = [m for m in self.models if m not in self.endpoints]
            if missing:
                raise ValueError(f"backend openai needs eval.endpoints for {', '.join(missing)} "
                                 "(e.g. endpoints: {stage2: {url: http://127.0.0.1:8000/v1}})")
        return self


class RegistryConfig(Strict):
    url: str = "sqlite:///registry.db"
    model_name: str = "finance-risk"
    enabled: bool = True


class ReviewConfig(Strict):
    """The review store: expert decisions on training samples (they decide what the data step
    trains on) and on model outputs during stage 2 (the heat engine's live rejection input)."""

    live: bool = Field(False, description="review k outputs per task at every stage-2 evaluation cycle")
    store: str = Field("review.db", description="SQLite path (relative: beside the run folders, so --fresh "
                                                "keeps verdicts) or any SQLAlchemy URL")
    simulate: bool = Field(True, description="a simulated reviewer answers through the review API (labelled "
                                             "'simulated'); false: only human verdicts count")
    k: int = Field(2, ge=1, description="outputs per task sampled for review each cycle")
    max_new_tokens: int = Field(48, ge=1, description="length of the sampled outputs")
    window: int = Field(50, ge=1, description="rejection rate over each task's most recent verdicts")
    prior: float = Field(0.1, ge=0, le=1, description="rate a task is shrunk toward while it has few verdicts")
    strength: float = Field(5.0, ge=0, description="pseudo-verdicts of the prior")
    noise: float = Field(0.05, ge=0, le=1, description="simulated reviewer: chance of flipping a verdict")
    bias: float = Field(0.0, ge=-1, le=1, description="simulated reviewer: lean towards reject (>0) or approve")
    required: int = Field(2, ge=1, description="agreeing reviewers that decide a training sample (dual "
                                               "validation; a disagreement waits for an adjudicator)")


class PipelineConfig(Strict):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch default); 1 suits tiny models")
    output_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    eval: EvalConfig = EvalConfig()
    gates: GatesConfig = GatesConfig()
    registry: RegistryConfig = RegistryConfig()
    review: ReviewConfig = ReviewConfig()

    # Paths are resolved relative to the YAML file's folder, recorded here by the loader.
    base_dir: str = Field(".", description="folder relative paths are resolved against")

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def run_dir(self) -> Path:
        return self.resolve(self.output_dir).resolve() / self.name

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all when none): used to detect a changed config on resume."""
        data = self.model_dump(mode="json", by_alias=True)
        data.pop("base_dir", None)
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']} (got {e.get('input')!r})"
        lines.append(f"  {path}: {msg}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like a.b.c=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict; the model validation afterwards rejects unknown ones."""
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", where=str(p))
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"not valid UTF-8 ({e.reason} at byte {e.start})", where=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"broken YAML: {getattr(e, 'problem', None) or e}", where=loc) from None


def apply_runtime(cfg: PipelineConfig) -> None:
    """Process-wide settings from the config (CPU threads)."""
    if cfg.threads > 0:
        import torch  # why: the config (and every command that reads one) must load without torch

        torch.set_num_threads(cfg.threads)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline YAML, apply ``a.b.c=value`` overrides and validate strictly."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", where=str(path))
    data = apply_overrides(data, list(overrides or []))
    data.setdefault("base_dir", str(Path(path).resolve().parent))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(path))) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
