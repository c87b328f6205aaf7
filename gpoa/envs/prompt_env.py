"""The prompt-editing environment (Gymnasium API) over the dual-space graph of each target image.

An episode edits the prompt set of one sample of an :class:`~gpoa.envs.bank.EpisodeBank`: every
action toggles one node of its :class:`~gpoa.graph.DualSpaceGraph` (a prompt candidate) or stops.
Rewards (``env.reward``):

- ``"segmentation"`` — Dice of the segmenter's mask after the step minus Dice before, against the
  sample's truth mask (needs a segmenter, images and truth masks);
- ``"graph"`` — change of the label-free :meth:`~gpoa.graph.DualSpaceGraph.graph_score`.

Every toggle (not STOP) pays ``env.step_penalty`` on top, so that the agent stops once no toggle
is worth its cost. Whenever the bank has a segmenter it is *in the loop*: every step decodes the
active prompts, so the current mask feeds the "inside_mask" node feature and the mask globals,
whichever the reward.

A step has three public phases, so that :class:`~gpoa.envs.vec_env.VecPromptEnv` can batch the
decodes of many environments: :meth:`PromptEnv.apply` (check and toggle), the decode, and
:meth:`PromptEnv.finish` (mask, reward, observation). :meth:`PromptEnv.step` runs them for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

from gpoa.config import EDITS, Config
from gpoa.envs.bank import EpisodeBank, SampleRecord
from gpoa.envs.mask_view import (
    LOOKAHEAD_SCALE,
    cell_statistics,
    current_columns,
    domain_lookahead,
    lookahead_columns,
)
from gpoa.graph import MASK_COLUMNS, NODE_FEATURES, DualSpaceGraph
from gpoa.kernels import write_action_mask
from gpoa.prompts import PromptSet
from gpoa.samples import EpisodeSample
from gpoa.segmenters import Segmenter, mask_cells

#: The globals that follow the mask (in GLOBAL_FEATURES from "mask_area_fraction" on, without the
#: reference's); 0 without a segmenter.
MASK_GLOBALS = ("mask_area_fraction", "mask_reference_ratio", "mask_match_rank", "top_match_coverage",
                "region_agreement", "region_confidence")

#: Entries of the observation's "globals" vector, in order.
GLOBAL_FEATURES = (
    "active_positive_fraction",  # active positives / env.max_positive
    "active_negative_fraction",  # active negatives / env.max_negative
    "step_fraction",  # steps taken / env.episode_length
    "segmenter_in_loop",  # 1 when a segmenter decodes every step
    "mask_area_fraction",  # share of the image inside the current mask, 0 without a segmenter
    "reference_area_fraction",  # share of the reference image(s) inside the reference mask
    "reference_instances",  # objects per reference image (connected pieces of its mask), / 5, at most 1
    # the mask against the image's match scores (label-free; 0 without a segmenter):
    "mask_reference_ratio",  # log2(mask area / reference area) / 4, clipped to [-1, 1]
    "mask_match_rank",  # mean match rank of the patches inside the mask (0 when it is empty)
    "top_match_coverage",  # share of the best-matching patches (the reference's area of them) inside the mask
    "region_agreement",  # soft Dice of the mask with the predicted region (gpoa.envs.mask_view)
    "region_confidence",  # how step-like the match scores are on the predicted region, [0, 1]
)


class PromptEnv(gymnasium.Env):
    """Edit the prompt set of one sample per episode by toggling graph nodes.

    Observation (dict):

    - ``"nodes"`` (max_nodes, F) float32 in [-1, 2]: :meth:`DualSpaceGraph.node_features` (columns
      :data:`gpoa.graph.NODE_FEATURES`), then ``env.domain_inputs`` columns of a taught policy's
      domain encoder (:mod:`gpoa.domain`; none by default), zero rows past the graph's N nodes;
    - ``"valid"`` (max_nodes,) int8: 1 for the N real nodes;
    - ``"globals"`` (G,) float32: :data:`GLOBAL_FEATURES`.

    Actions: ``Discrete(max_nodes + 1)``; ``i < N`` toggles node i, ``max_nodes`` is STOP (the
    episode terminates, reward 0). :meth:`action_masks` marks the valid ones: STOP always; a toggle
    only if it takes no count of active positives / negatives below ``env.min_*`` or above
    ``env.max_*``, and only for a node not yet toggled in this episode (each node changes at most
    once: an undo would only waste steps and lets a greedy policy loop). A start state outside
    those bounds is allowed (``env.start=empty`` with ``env.min_positive=1``, or a prompt file with
    more negatives than ``env.max_negative``): the agent can then only move the count towards
    them. Episodes are truncated after ``env.episode_length`` steps.

    Start state (``env.start``): ``initial`` (the sample's prompt set), ``ideal`` (prompts sampled
    from the truth mask with :func:`~gpoa.prompts.sample_ideal_prompts`, using
    ``segmentation.ideal_positive/negative``; the graph is built from the prompt set extended by
    them), ``empty`` (no active node).

    ``info``: ``score`` (graph score), ``positives``, ``negatives`` (active counts), ``sample`` and
    ``task`` (names), and ``dice`` (Dice of the current mask) when a segmenter and a truth mask are
    there.
    """

    metadata = {"render_modes": []}

    def __init__(self, bank: Union[EpisodeBank, Sequence[EpisodeSample]], cfg: Config,
                 segmenter: Optional[Segmenter] = None, seed: Optional[int] = None):
        if not isinstance(bank, EpisodeBank):
            bank = EpisodeBank(bank, cfg, segmenter=segmenter, seed=0 if seed is None else seed)
        elif segmenter is not None and segmenter is not bank.segmenter:
            raise ValueError("the segmenter of an environment is its bank's; pass it to the EpisodeBank")
        self.bank, self.cfg = bank, cfg
        self._weights = np.asarray(cfg.env.graph_weights, dtype=np.float64)
        env = cfg.env
        self.max_nodes = env.max_nodes
        self.stop_action = env.max_nodes
        self.action_space = spaces.Discrete(env.max_nodes + 1)
        global_high = np.array([env.max_nodes / max(env.max_positive, 1), env.max_nodes / max(env.max_negative, 1),
                                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
        global_low = np.zeros(len(GLOBAL_FEATURES), np.float32)
        global_low[GLOBAL_FEATURES.index("mask_reference_ratio")] = -1.0
        self.observation_space = spaces.Dict({
            "nodes": spaces.Box(low=-1.0, high=2.0, shape=(env.max_nodes, len(NODE_FEATURES) + env.domain_inputs),
                                dtype=np.float32),
            "valid": spaces.MultiBinary(env.max_nodes),
            "globals": spaces.Box(low=global_low, high=global_high, dtype=np.float32),
        })
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self.record: Optional[SampleRecord] = None
        self.graph: Optional[DualSpaceGraph] = None
        self._steps = 0
        self._done = True
        self._mask: Optional[np.ndarray] = None
        self._dice: Optional[float] = None
        self._mask_columns: Optional[np.ndarray] = None  # (N, len(MASK_COLUMNS)), see observe_mask
        self._shielded: Optional[np.ndarray] = None  # (N,) bool, toggles the shield refuses now
        self._edits, self._shield_on = cfg.env.edits, True
        self._mask_globals = np.zeros(len(MASK_GLOBALS), dtype=np.float32)
        self._domain_lookahead: Optional[np.ndarray] = None  # (N,), a taught policy's (gpoa.domain)
        self._score = 0.0

    @property
    def segmenter(self) -> Optional[Segmenter]:
        return self.bank.segmenter

    # ----- introspection ------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return len(self.bank)

    @property
    def sample(self) -> EpisodeSample:
        """The sample of the current episode."""
        self._require_episode()
        return self.record.sample

    @property
    def mask(self) -> Optional[np.ndarray]:
        """The current mask (H, W) bool, None without a segmenter."""
        return self._mask

    @property
    def dice(self) -> Optional[float]:
        """Dice of the current mask against the truth, None without a segmenter or a truth mask."""
        return self._dice

    @property
    def done(self) -> bool:
        return self._done

    @property
    def toggled(self) -> np.ndarray:
        """(N,) bool: the nodes toggled in this episode (each may be toggled once); with the active
        nodes, what makes one state of an episode differ from another."""
        return self._toggled

    def prompt_set(self, source: str = "env") -> PromptSet:
        """The active prompts of the current episode as a :class:`PromptSet`."""
        self._require_episode()
        return self.graph.to_prompt_set(self.record.sample.prompt_set, source)

    def _require_episode(self) -> None:
        if self.graph is None:
            raise RuntimeError("call reset() before using the environment")

    # ----- Gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple:
        """Start an episode on a sample drawn uniformly (``options={"sample": i}`` picks sample i)."""
        super().reset(seed=seed)
        if options and options.get("sample") is not None:
            index = int(options["sample"])
            if not 0 <= index < len(self.bank):
                raise ValueError(f"options['sample']={index} but there are {len(self.bank)} samples")
        else:
            index = int(self.np_random.integers(len(self.bank)))
        self.record = self.bank.record(index)
        self.graph = self.record.graph.clone()  # shares the static arrays, copies the start state
        self._toggled = np.zeros(self.graph.num_nodes, dtype=bool)
        self._steps = 0
        self._done = False
        self._edits, self._shield_on = self.cfg.env.edits, True
        if self.segmenter is not None:
            record, key = self.record, (self._edits, self.cfg.env.lookahead, self.cfg.env.shield)
            if key not in record.start_observations:  # the start state's mask view is the same every episode
                self.observe_mask(*self.bank.start_mask(record))
                record.start_observations[key] = (self._mask_columns, self._mask_globals, self._shielded,
                                                  self._domain_lookahead)
            else:
                self._mask, self._dice = record.start_mask, record.start_dice
                (self._mask_columns, self._mask_globals, self._shielded,
                 self._domain_lookahead) = record.start_observations[key]
        self._score = self.graph.graph_score(self._weights)
        return self.observation(), self.info()

    def step(self, action: int) -> tuple:
        """Toggle node ``action`` or STOP (``action == max_nodes``) → (obs, reward, terminated, truncated, info)."""
        dice_before = self._dice
        if self.apply(action) and self.segmenter is not None:
            masks, dice = self.bank.decode(self.record, [self.graph])
            self.observe_mask(masks[0], None if dice is None else float(dice[0]))
        return self.finish(action, dice_before)

    def action_masks(self, shielded: bool = True) -> np.ndarray:
        """(max_nodes + 1,) bool: which actions are valid now (see the class docstring); with
        ``shielded=False`` the toggles the shield refuses count as valid (the oracle's view)."""
        self._require_episode()
        graph = self.graph
        can_remove, can_add = self._allowed_toggles()
        valid = np.zeros(self.max_nodes + 1, dtype=bool)
        write_action_mask(graph.active, graph.category, self._toggled, can_remove, can_add, valid[:graph.num_nodes])
        if shielded and self._shielded is not None:
            valid[:graph.num_nodes] &= ~self._shielded
        valid[self.stop_action] = True
        return valid

    def _allowed_toggles(self) -> tuple:
        """(can_remove, can_add), each a pair of bools indexed by category (0 negative, 1 positive)."""
        graph, env = self.graph, self.cfg.env
        positives, negatives = graph.num_positive, graph.num_negative
        remove = self._edits != "activate"
        add = self._edits != "deactivate"
        return ((remove and negatives - 1 >= env.min_negative, remove and positives - 1 >= env.min_positive),
                (add and negatives + 1 <= env.max_negative, add and positives + 1 <= env.max_positive))

    def set_edits(self, edits: str, shield: bool = True) -> dict:
        """Switch the edits allowed from now on — ``toggle`` (any node), ``activate`` (inactive nodes
        only) or ``deactivate`` (active prompts only) — and whether the shield applies; a new phase of
        the episode begins (every node may be toggled once more, the step count restarts, an episode
        that ended is open again). Returns the observation. Point Prompt Defender's attacker and
        defender take turns this way (:mod:`gpoa.agents.adversarial`)."""
        self._require_episode()
        if edits not in EDITS:
            raise ValueError(f"edits must be one of {', '.join(EDITS)}, got '{edits}'")
        self._edits, self._shield_on = edits, shield
        self._toggled[:] = False
        self._steps = 0
        self._done = False
        if self.segmenter is not None:
            self.observe_mask(self._mask, self._dice)
        return self.observation()

    # ----- the phases of a step -----------------------------------------------------------------
    def check_action(self, action: int, shielded: bool = True) -> None:
        """Raise ValueError (RuntimeError outside an episode) unless ``action`` is valid now (a toggle
        the shield refuses counts as valid with ``shielded=False``)."""
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode has ended (STOP or truncation); call reset()")
        if not 0 <= action <= self.stop_action:
            raise ValueError(f"action {action} is outside 0..{self.stop_action}")
        if action == self.stop_action:
            return
        if action >= self.graph.num_nodes:
            raise ValueError(f"action {action} is padding: sample '{self.record.sample.name}' has "
                             f"{self.graph.num_nodes} nodes (STOP is {self.stop_action})")
        if self._toggled[action]:
            raise ValueError(f"action {action} toggles node {action} a second time in this episode; each node "
                             "is toggled at most once per episode (undoing a toggle only wastes steps)")
        if shielded and self._shielded is not None and self._shielded[action]:
            raise ValueError(f"action {action} is refused by the shield (env.shield): its lookahead says the mask "
                             "would move away from the predicted region; choose among action_masks()")
        category, active = int(self.graph.category[action]), bool(self.graph.active[action])
        can_remove, can_add = self._allowed_toggles()
        if not (can_remove if active else can_add)[category]:
            kind = "positive" if category else "negative"
            bound = "min" if active else "max"
            raise ValueError(f"action {action} toggles a {kind} node beyond env.{bound}_{kind}; "
                             "choose among action_masks()")

    def apply(self, action: int, shielded: bool = True) -> bool:
        """Phase 1: check ``action`` and toggle its node. True when the prompts changed (a decode is due)."""
        self.check_action(action, shielded)
        if action == self.stop_action:
            return False
        self.graph.toggle(action)
        self._toggled[action] = True
        return True

    def observe_mask(self, mask: np.ndarray, dice: Optional[float]) -> None:
        """Phase 2: the segmenter's mask (H, W) bool of the current prompts and its Dice (or None).

        Computes what the agent sees of the mask (:mod:`gpoa.envs.mask_view`), including, with
        ``env.lookahead``, the effect of toggling each node that can be toggled now.
        """
        self._mask = mask
        self._dice = dice
        record, graph = self.record, self.graph
        view = record.view
        cells = mask_cells(mask, (graph.grid.rows, graph.grid.cols)).reshape(-1)
        stats = cell_statistics(cells[None], view)[0]
        columns = np.zeros((graph.num_nodes, len(MASK_COLUMNS)), dtype=np.float32)
        columns[:, :2] = current_columns(mask, cells, graph, record.node_pixels)
        self._shielded = None
        self._domain_lookahead = None if view.domain_region is None else np.zeros(graph.num_nodes, np.float32)
        if self.cfg.env.lookahead:
            toggles = np.flatnonzero(self.action_masks(shielded=False)[:graph.num_nodes])
            if len(toggles):
                variants = []
                for node in toggles:
                    active = graph.active.copy()
                    active[node] = not active[node]
                    variants.append(record.prompts_of(active, graph.is_positive))
                cells_after = self.bank.decode_cells(record, variants, base=record.prompts(graph))
                columns[toggles, 2:] = lookahead_columns(cells, stats, cells_after, view)
                if view.domain_region is not None:
                    self._domain_lookahead[toggles] = domain_lookahead(cells, cells_after, view)
            if self.cfg.env.shield >= 0 and self._shield_on:
                agreement = columns[:, MASK_COLUMNS.index("lookahead_region_agreement")] / LOOKAHEAD_SCALE
                self._shielded = agreement < -self.cfg.env.shield
        self._mask_columns = columns
        area = np.count_nonzero(mask) / mask.size
        share = view.reference_share
        self._mask_globals = np.array([area, np.clip(np.log2((area + 1e-3) / (share + 1e-3)) / 4.0, -1.0, 1.0),
                                       stats[2], stats[3], stats[0], view.confidence], dtype=np.float32)

    def finish(self, action: int, dice_before: Optional[float]) -> tuple:
        """Phase 3: reward, flags, observation and info once ``action`` is applied and its mask observed."""
        self._steps += 1
        terminated = action == self.stop_action
        score_before, self._score = self._score, self.graph.graph_score(self._weights)
        if terminated:
            reward = 0.0
        elif self.cfg.env.reward == "segmentation":
            change = self._dice - dice_before
            # harm weighs env.harm_weight times a gain of the same size: risky edits are not worth it
            reward = (change if change >= 0 else self.cfg.env.harm_weight * change) - self.cfg.env.step_penalty
        else:
            reward = self._score - score_before - self.cfg.env.step_penalty
        truncated = not terminated and self._steps >= self.cfg.env.episode_length
        self._done = terminated or truncated
        return self.observation(), float(reward), bool(terminated), bool(truncated), self.info()

    # ----- what the agent sees ------------------------------------------------------------------
    def observation(self) -> dict:
        graph, env = self.graph, self.cfg.env
        nodes = np.zeros((self.max_nodes, len(NODE_FEATURES) + env.domain_inputs), dtype=np.float32)
        if self.record.domain_columns is None:
            graph.node_features(self._mask_columns, out=nodes[:graph.num_nodes])
        else:  # a taught policy's domain columns (gpoa.domain) after the columns every policy sees
            nodes[:graph.num_nodes, :len(NODE_FEATURES)] = graph.node_features(self._mask_columns)
            nodes[:graph.num_nodes, len(NODE_FEATURES):-1] = self.record.domain_columns
            if self._domain_lookahead is not None:
                nodes[:graph.num_nodes, -1] = self._domain_lookahead
        valid = np.zeros(self.max_nodes, dtype=np.int8)
        valid[:graph.num_nodes] = 1
        globals_ = np.empty(len(GLOBAL_FEATURES), dtype=np.float32)
        globals_[:4] = (graph.num_positive / max(env.max_positive, 1), graph.num_negative / max(env.max_negative, 1),
                        self._steps / env.episode_length, float(self.segmenter is not None))
        globals_[4] = self._mask_globals[0]
        globals_[5] = self.record.view.reference_share
        globals_[6] = min(self.record.sample.reference.instances / 5.0, 1.0)
        globals_[7:] = self._mask_globals[1:]
        return {"nodes": nodes, "valid": valid, "globals": globals_}

    def info(self) -> dict:
        info = {"score": self._score, "positives": self.graph.num_positive, "negatives": self.graph.num_negative,
                "sample": self.record.sample.name, "task": self.record.sample.task}
        if self._dice is not None:
            info["dice"] = self._dice
        return info
