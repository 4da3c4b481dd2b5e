"""Small synthetic samples for trainer tests (no dependency on the data layer's generator)."""

from __future__ import annotations

import random

from mixtune.data.schema import Message, Sample

TASKS = {
    "calc_lcr": ("logic", ["计算流动性覆盖率", "请计算LCR", "求流动性覆盖率并保留两位小数"]),
    "concept_spread": ("general", ["解释信用利差", "什么是信用利差", "请说明信用利差的含义"]),
    "pii_mask": ("safety", ["对以下信息脱敏", "请隐藏个人信息", "脱敏处理下列文本"]),
}


def make_samples(n_per_task: int = 12, seed: int = 0, twins: bool = True) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for task, (group, phrasings) in TASKS.items():
        for k in range(n_per_task):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            p = k % len(phrasings)
            inp = f"数据{a}和{b}"
            answer = {"calc_lcr": f"结果={a + b}", "concept_spread": f"利差为{a}bp",
                      "pii_mask": f"手机号138****{b:04d}"}[task]
            split = "val" if k % 6 == 5 else "train"
            s = Sample(task_id=task, family=task.split("_")[0], group=group, stage=1, instruction=phrasings[p],
                       input=inp, output=answer, phrasing_id=p, split=split,
                       messages=[Message(role="user", content=phrasings[p] + "\n" + inp),
                                 Message(role="assistant", content=answer)]).with_id()
            out.append(s)
            if twins and split == "train":
                t_instr = "（无关修饰）" + phrasings[p]
                tw = Sample(task_id=task, family=s.family, group=group, stage=1, instruction=t_instr, input=inp,
                            output=answer, phrasing_id=p, split="train", parent_id=s.id,
                            perturbation_type="modifier",
                            messages=[Message(role="user", content=t_instr + "\n" + inp),
                                      Message(role="assistant", content=answer)]).with_id()
                out.append(tw)
    return out


def corpus(samples) -> list[str]:
    return [m.content for s in samples for m in s.messages]
