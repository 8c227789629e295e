"""The fine-tune budget of each arm: how many optimizer steps its fine-tune from the base takes.

The paper trains every arm on the same data; on the embedded corpus that budget leaves the long
contexts short of what they hold (``visctx finetune-budget``: T1-M196-pool needs about thirty times
the steps of T1-M9-pool to reach its ceiling on the 10,000-step bases), so a study can let the
budget grow with the visual tokens the text attends to (``kept_tokens``): arms of one window get
the same budget whatever their split of it into frames and tokens, so no comparison at equal
window tilts. ``train.arm.token_steps`` = 0 is the paper's way, every arm ``train.arm.steps``.

Its own module, read by the workflow and the harness only: the training library runs whatever
steps it is given, so a change of the rule reruns the fine-tunes whose length it changes and no
other job (a change in a module the training imports would rerun the bases too).
"""

from __future__ import annotations

import math
from typing import Any

from visctx.config import Arm

BUDGET_KEYS = ("token_steps", "max_steps")  # train.arm's keys that set the length, not a train option


def arm_steps(arm: Arm | str, options: dict[str, Any]) -> int:
    """``max(steps, ceil(token_steps * kept_tokens))``, at most ``max_steps`` (when set) and never
    below ``steps``: the floor is every arm's budget under the paper's rule."""
    arm = Arm.from_id(arm) if isinstance(arm, str) else arm
    steps, per_token = int(options["steps"]), float(options.get("token_steps") or 0)
    cap = options.get("max_steps")
    n = max(steps, math.ceil(per_token * arm.kept_tokens - 1e-9))
    return max(steps, min(n, int(cap))) if cap else n


def arm_options(arm: Arm | str, options: dict[str, Any]) -> dict[str, Any]:
    """``train.arm`` as the options of one arm's fine-tune: its own ``steps``, the budget's keys
    (which no training command takes) left out."""
    return {**{k: v for k, v in options.items() if k not in BUDGET_KEYS}, "steps": arm_steps(arm, options)}
