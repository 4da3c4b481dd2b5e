"""Shared benchmark inputs: the demo dataset (reduced), the built-in tiny model, configs.

Every suite builds its inputs through here so all of them train on the same data with the same
model shape. The dataset is made by the data layer's own generator, difficulty scorer and
perturbation generator (the pieces ``build_dataset`` runs) with defects off and a seeded hash split,
so the benchmarks do not depend on a rules file or review state; the results record this.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from pathlib import Path

import pyarrow.parquet as pq

from mixtune.bench.harness import EXAMPLES_ENV
from mixtune.config import PipelineConfig, load_config
from mixtune.data.difficulty import DifficultyScorer
from mixtune.data.generate import generate_samples
from mixtune.data.ontology import load_ontology
from mixtune.data.perturb import perturb_samples
from mixtune.data.schema import samples_to_table, table_to_samples
from mixtune.errors import ConfigError
from mixtune.model.tiny import build_tiny_model

# Quick tier: a smaller model so every suite's quick run fits the 2-minute budget on 2 cores.
QUICK_SHAPE = {"vocab_size": 600, "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def examples_dir() -> Path:
    """The ``examples`` folder whose ``finance_risk`` example every benchmark trains on.

    ``$MIXTUNE_EXAMPLES`` when set (``mixtune bench --examples`` sets it), else the source
    checkout this package runs from (an editable install), else ``./examples``. A pip-installed
    package ships no examples, so without a clone this is one clear error, not a missing file
    deep inside a suite.
    """
    candidates = [Path(os.environ[EXAMPLES_ENV])] if os.environ.get(EXAMPLES_ENV) else [
        Path(__file__).resolve().parents[3] / "examples",  # src/mixtune/bench/fixtures.py -> repo root
        Path.cwd() / "examples",
    ]
    for folder in candidates:
        if (folder / "finance_risk" / "pipeline.yaml").is_file():
            return folder
    raise ConfigError(
        "benchmarks need the repository's examples/finance_risk (not part of a pip install); run from a "
        f"clone or pass --examples PATH_TO/examples (or set {EXAMPLES_ENV})",
        where=", ".join(str(c) for c in candidates),
    )


def finance_dir() -> Path:
    """``examples/finance_risk``: ontology, rules and the demo pipeline config."""
    return examples_dir() / "finance_risk"


def demo_config_path() -> Path:
    """The demo pipeline config ``make demo`` runs."""
    return finance_dir() / "pipeline.yaml"


@functools.lru_cache(maxsize=1)
def _demo_config() -> PipelineConfig:
    return load_config(demo_config_path(), [])


def demo_config() -> PipelineConfig:
    """The demo pipeline config, loaded once per process so every suite of one run sees the same file."""
    return _demo_config().model_copy(deep=True)


def with_updates(cfg: PipelineConfig, updates: dict[str, object]) -> PipelineConfig:
    """A copy of ``cfg`` with dotted-key updates applied and re-validated."""
    data = copy.deepcopy(cfg.model_dump(mode="json", by_alias=True))
    for key, value in updates.items():
        node = data
        *head, last = key.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return PipelineConfig.model_validate(data)


def _split(sample_id: str, seed: int, val: float, test: float) -> str:
    u = int(hashlib.sha256(f"{seed}|{sample_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if u < val else "test" if u < val + test else "train"


def _fallback_dataset(cfg: PipelineConfig, n_per_task: int, seed: int) -> list:
    onto = load_ontology(cfg.resolve(cfg.data.ontology))
    scorer = DifficultyScorer()
    samples = generate_samples(onto, n_per_task=n_per_task, seed=seed, defect_rate=0.0,
                               value_pool=cfg.data.value_pool)
    out = []
    for s in samples:
        task = onto.tasks[s.task_id]
        scorer.apply(s, task.difficulty.model_dump())
        s.split = _split(s.id, seed, cfg.data.val_fraction, cfg.data.test_fraction)
        s.review_status = "approved"
        out.append(s)
    # Twins for train (adversarial term) and test (clean-vs-perturbed score drop) parents.
    for split in ("train", "test"):
        parents = [s for s in out if s.split == split and s.stage == 1]
        frac = cfg.data.perturb_fraction if split == "train" else 1.0
        out += [t.model_copy(update={"split": split}) for t in perturb_samples(parents, frac, seed)]
    return out


def load_dataset(work: Path, *, n_per_task: int, seed: int, cfg: PipelineConfig | None = None) -> tuple[list, str]:
    """Samples for the benchmarks and a note on how they were produced (cached under ``work``)."""
    cfg = cfg or demo_config()
    cache = work / f"data_n{n_per_task}_s{seed}_v{cfg.data.value_pool}.parquet"
    if cache.is_file():
        return table_to_samples(pq.read_table(cache)), cache.with_suffix(".src").read_text()
    work.mkdir(parents=True, exist_ok=True)
    source = (f"generate_samples(value_pool={cfg.data.value_pool}) + DifficultyScorer + perturb_samples, "
              "hash split, defect_rate 0")
    samples = _fallback_dataset(cfg, n_per_task, seed)
    pq.write_table(samples_to_table(samples), cache)
    cache.with_suffix(".src").write_text(source)
    return samples, source


def tiny_model(work: Path, samples: list, shape: dict, seed: int = 0) -> str:
    """Build (once per shape/seed) the built-in tiny model on the training texts; returns its path."""
    key = hashlib.sha256(repr((sorted(shape.items()), seed, len(samples))).encode()).hexdigest()[:10]
    out = work / f"model_{key}"
    if not (out / "config.json").is_file():
        texts = [m.content for s in samples if s.split == "train" for m in s.messages]
        build_tiny_model(out, texts, seed=seed, **shape)
    return str(out)


def model_shape(cfg: PipelineConfig, tier: str) -> dict:
    """The demo's tiny shape on the full tier, a smaller one on the quick tier."""
    return cfg.model.tiny.model_dump() if tier == "full" else dict(QUICK_SHAPE)
