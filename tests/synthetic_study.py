"""A study whose losses follow a known joint law: the input the fit and report tests share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from visctx.collect import design_table
from visctx.config import study_points, unique_arms
from visctx.fit import joint_loss

JOINT = {"E": 0.8, "A": 1.5, "alpha": 0.4, "B": 2.0, "beta": 0.6}
STUDIES = {  # an earlier embedded-default design (43 arms)
    "tokens": {"frames": 4, "tokens": [1, 4, 9, 16, 25, 36, 49, 81, 196], "methods": ["sample", "pool"]},
    "frames": {"tokens": 9, "token_method": "pool", "frames": [1, 2, 4, 6, 8, 12, 16, 32],
               "methods": ["sample", "pool"], "pool_source": 32},
    "joint": {"token_method": "pool", "tokens": [4, 25], "frames": [8, 12, 16, 24]},
    "window": {"token_method": "pool", "combos": [[4, 36], [6, 25], [10, 16], [16, 9], [32, 4]]},
}


def write_study(tmp, studies=STUDIES, noise=0.005, seed=0, params=JOINT, frame_pool_gain=0.02, seeds=(0,),
                seed_noise=0.003):
    """arms.csv + design.csv whose pool x frame-sample losses follow ``params`` exactly (x noise);
    token sampling adds 0.3 M^-0.3 and frame pooling subtracts ``frame_pool_gain``. ``seeds``: a row
    per training replicate, each arm's loss times exp(``seed_noise`` x N(0, 1)) per seed."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in unique_arms(study_points(studies)):
        loss = float(joint_loss(params, a.T, a.M)[0])
        if a.token_op == "sample":
            loss += 0.3 * a.M ** -0.3
        if a.frame_op == "pool":
            loss -= frame_pool_gain
        loss *= math.exp(noise * rng.normal())
        for s in seeds:
            ls = loss * math.exp(seed_noise * rng.normal()) if len(seeds) > 1 else loss
            acc = float(np.clip(1.3 - 0.6 * ls, 0, 1))
            rows.append({"arm": a.id, "T": a.T, "M": a.M, "token_op": a.token_op, "frame_op": a.frame_op,
                         "pooled_from": a.pooled_from, "tokens": a.tokens, "seed": s, "benchmark": "synthetic",
                         "n": 200, "loss": ls, "accuracy": acc, "acc_needle": acc * 0.9, "acc_order": acc * 0.7})
    arms, design = tmp / "arms.csv", tmp / "design.csv"
    pd.DataFrame(rows).to_csv(arms, index=False)
    design_table(studies).to_csv(design, index=False)
    return arms, design
