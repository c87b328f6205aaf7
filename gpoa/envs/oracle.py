"""The greedy oracle: the best a one-toggle-at-a-time editor can do when it may read the truth mask.

From the same start state, over the same candidates and under the same action bounds as a policy
(but not its shield, ``env.shield``),
each step decodes every valid toggle and takes the one that raises Dice most; it stops when none
raises it (or when the episode is truncated). It is a yardstick for evaluation tables (how much
of the reachable gain a policy takes), never a method: it reads the truth mask.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from gpoa.envs.prompt_env import PromptEnv

#: a toggle must raise Dice by more than this to be taken
MIN_GAIN = 1e-9


def toggle_dice(env: PromptEnv, shielded: bool = False) -> tuple:
    """Every valid toggle of ``env``'s current state decoded: (toggles (V,) int64 node indices, masks
    (V, H, W) bool, Dice (V,) float64 against the truth). ``shielded``: leave out the toggles the
    shield refuses (what a policy may take); the oracle reads them all."""
    graph, record = env.graph, env.record
    toggles = np.flatnonzero(env.action_masks(shielded=shielded)[:graph.num_nodes])
    if len(toggles) == 0:
        return toggles, None, np.zeros(0)
    prompts = []
    for node in toggles:  # each candidate set: toggle, read the prompts, toggle back (O(N) each)
        graph.toggle(node)
        prompts.append(record.prompts(graph))
        graph.toggle(node)
    masks, dice = env.bank.decode_prompts(record, prompts)
    return toggles, masks, dice


def run_oracle(env: PromptEnv, options: Optional[dict] = None, seed: Optional[int] = None) -> tuple:
    """One greedy-with-truth episode → (actions list, final info). Its Dice never ends below the start's."""
    env.reset(seed=seed, options=options)
    if env.segmenter is None or env.dice is None:
        raise ValueError("the oracle needs a segmenter in the loop and the sample's truth mask")
    actions = []
    while True:
        toggles, masks, dice = toggle_dice(env)
        best = None
        if len(toggles):
            k = int(np.argmax(dice))
            if dice[k] > env.dice + MIN_GAIN:
                best = (int(toggles[k]), masks[k], float(dice[k]))
        dice_before = env.dice
        if best is None:
            actions.append(env.stop_action)
            env.apply(env.stop_action)
            *_, info = env.finish(env.stop_action, dice_before)
            return actions, info
        action, mask, dice_after = best
        actions.append(action)
        env.apply(action, shielded=False)
        env.observe_mask(mask, dice_after)
        _, _, _, truncated, info = env.finish(action, dice_before)
        if truncated:
            return actions, info
