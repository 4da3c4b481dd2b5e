"""The shipped IFEval prompt sets and the seeded, instruction-type-stratified subset of them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mixtune.errors import DataError
from mixtune.eval.ifeval import INSTRUCTIONS
from mixtune.eval.ifeval.subset import (
    DATA,
    PROMPT_SETS,
    instruction_types,
    packaged_prompts,
    packaged_subset,
    stratified_subset,
)
from mixtune.eval.matrix import IFEVAL_FAMILIES
from mixtune.report.ifeval import IFEVAL_BLOCKS


@pytest.fixture(scope="module")
def english():
    return packaged_prompts("ifeval")


def test_both_sets_ship_in_the_package_with_their_licence(english):
    assert len(english) == 541 and len(instruction_types(english)) == 25
    zh = packaged_prompts("ifeval_zh")
    assert len(zh) == 541 and set(instruction_types(zh)) == set(instruction_types(english))
    assert set(instruction_types(english)) <= set(INSTRUCTIONS)  # the scorer knows every type
    notice = (DATA / "NOTICE").read_text(encoding="utf-8")
    assert "Apache License" in (DATA / "LICENSE").read_text(encoding="utf-8")
    assert "Google Research" in notice and "AIDC-AI" in notice
    assert "tests" not in DATA.parts  # what `mixtune run` reads is package data, not test data
    # the names the subset, the summary blocks, the gates and the report use agree
    assert tuple(PROMPT_SETS) == IFEVAL_FAMILIES == tuple(IFEVAL_BLOCKS)
    with pytest.raises(DataError, match="ifeval_fr"):
        packaged_prompts("ifeval_fr")


def test_subset_is_deterministic_and_a_prefix_of_a_larger_one(english):
    a = stratified_subset(english, 25, seed=0)
    assert a == stratified_subset(english, 25, seed=0) == packaged_subset("ifeval", 25, 0)
    assert [p["key"] for p in stratified_subset(english, 10, seed=0)] == [p["key"] for p in a[:10]]
    assert len({p["key"] for p in a}) == 25  # no prompt twice
    # the input order does not matter beyond the prompts themselves: only (seed, n) decide
    shuffled = list(english)
    random.Random(5).shuffle(shuffled)
    assert {p["key"] for p in stratified_subset(sorted(shuffled, key=lambda p: p["key"]), 25, 0)} == \
        {p["key"] for p in stratified_subset(sorted(english, key=lambda p: p["key"]), 25, 0)}


def test_another_seed_gives_another_subset(english):
    keys = {s: {p["key"] for p in stratified_subset(english, 25, seed=s)} for s in (0, 1, 2)}
    assert keys[0] != keys[1] and keys[1] != keys[2] and keys[0] != keys[2]


@pytest.mark.parametrize("n", [1, 5, 12, 25, 40])
def test_subset_covers_min_n_types_and_spreads_them_evenly(english, n):
    sub = stratified_subset(english, n, seed=3)
    assert len(sub) == n
    assert len(instruction_types(sub)) >= min(n, 25)
    if n >= 25:  # every type is in, and none crowds out the rest
        counts = Counter(t for p in sub for t in set(p["instruction_id_list"]))
        assert min(counts.values()) >= n // 25
    # a plain random draw of the same size misses types the stratified one covers
    if n == 25:
        plain = random.Random(3).sample(english, 25)
        assert len(instruction_types(plain)) < 25


def test_rare_types_and_edge_sizes(english):
    rare = "detectable_format:constrained_response"  # 10 of 541 prompts
    assert any(rare in p["instruction_id_list"] for p in stratified_subset(english, 25, seed=11))
    assert stratified_subset(english, 0, seed=0) == [] and packaged_subset("ifeval", 0, 0) == []
    toy = [{"key": 1, "prompt": "a", "instruction_id_list": ["x:y"]},
           {"key": 2, "prompt": "b", "instruction_id_list": []}]
    assert [p["key"] for p in stratified_subset(toy, 5, seed=0)] == [1]  # only prompts with instructions
    every = stratified_subset(english, 541, seed=0)
    assert sorted(p["key"] for p in every) == sorted(p["key"] for p in english)
