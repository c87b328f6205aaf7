"""The prompt-editing environment (Gymnasium API) over the dual-space graph of each target image.

An episode edits the prompt set of one :class:`EpisodeSample`: every action toggles one node of
its :class:`~gpoa.graph.DualSpaceGraph` (a prompt candidate) or stops. Rewards (``env.reward``):

- ``"segmentation"`` — Dice of the segmenter's mask after the step minus Dice before, against the
  sample's truth mask (needs a segmenter, images and truth masks);
- ``"graph"`` — change of the label-free :meth:`~gpoa.graph.DualSpaceGraph.graph_score`.

Every toggle (not STOP) pays ``env.step_penalty`` on top, so that the agent stops once no toggle
is worth its cost.

Whenever a segmenter is given it is *in the loop*: every step decodes the active prompts, so the
current mask feeds the "inside_mask" node feature and the mask-area global, whichever the reward.
Graphs are built once per sample and segmenter embeddings computed once per sample; environments
made with :meth:`PromptEnv.spawn` share both. :func:`step_batch` steps several environments with
one ``segmenter.decode`` call per distinct sample; :meth:`PromptEnv.step` is a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

from gpoa.config import Config
from gpoa.graph import NODE_FEATURES, DualSpaceGraph, build_graph
from gpoa.grid import PatchGrid
from gpoa.kernels import write_action_mask
from gpoa.matching import ReferenceFeatures
from gpoa.metrics import dice_batch
from gpoa.prompts import PointPrompts, PromptSet, sample_ideal_prompts
from gpoa.segmenters import Segmenter

#: Entries of the observation's "globals" vector, in order.
GLOBAL_FEATURES = (
    "active_positive_fraction",  # active positives / env.max_positive
    "active_negative_fraction",  # active negatives / env.max_negative
    "step_fraction",  # steps taken / env.episode_length
    "segmenter_in_loop",  # 1 when a segmenter decodes every step
    "mask_area_fraction",  # share of the image inside the current mask, 0 without a segmenter
)

REWARDS = ("segmentation", "graph")
STARTS = ("initial", "ideal", "empty")


@dataclass
class EpisodeSample:
    """One target image an episode can edit.

    ``target_features`` (rows, cols, D) are its patch features on ``grid``; ``prompt_set`` the
    prompts to start from (e.g. the matching output). ``image`` (H, W, 3) uint8 and ``truth_mask``
    (H, W) bool, at the original image size, are needed for a segmenter in the loop and for the
    segmentation reward / ideal start respectively.
    """

    name: str
    grid: PatchGrid
    target_features: np.ndarray
    prompt_set: PromptSet
    image: Optional[np.ndarray] = None
    truth_mask: Optional[np.ndarray] = None


@dataclass
class _SampleRecord:
    """What is computed once per sample and shared by spawned environments."""

    sample: EpisodeSample
    graph: DualSpaceGraph  # template in the start state; each environment steps its own clone
    node_xy: np.ndarray  # (N, 2) (x, y) original-image pixels of the nodes' patch centres
    node_pixels: tuple  # (row (N,), col (N,)) original-image pixel under each node's patch centre
    embedding: Any = None
    start_mask: Optional[np.ndarray] = None  # (H, W) bool, the decoded start prompts
    start_dice: Optional[float] = None


def _check_config(cfg: Config) -> None:
    env = cfg.env
    if env.reward not in REWARDS:
        raise ValueError(f"env.reward is '{env.reward}'; use one of {', '.join(REWARDS)}")
    if env.start not in STARTS:
        raise ValueError(f"env.start is '{env.start}'; use one of {', '.join(STARTS)}")
    if env.episode_length < 1 or env.max_nodes < 1:
        raise ValueError("env.episode_length and env.max_nodes must be at least 1")
    for kind in ("positive", "negative"):
        low, high = getattr(env, f"min_{kind}"), getattr(env, f"max_{kind}")
        if not 0 <= low <= high:
            raise ValueError(f"env.min_{kind}={low} and env.max_{kind}={high} must satisfy 0 <= min <= max")
    if len(env.graph_weights) != 5:
        raise ValueError(f"env.graph_weights needs 5 weights, got {env.graph_weights}")


def _check_sample(sample: EpisodeSample, cfg: Config, segmenter: Optional[Segmenter]) -> None:
    width, height = sample.prompt_set.original_size
    if segmenter is not None or cfg.env.reward == "segmentation":
        if segmenter is None:
            raise ValueError("env.reward=segmentation needs a segmenter; pass one or use env.reward=graph")
        if sample.image is None:
            raise ValueError(f"sample '{sample.name}' has no image; a segmenter in the loop decodes every sample")
        if sample.image.shape[:2] != (height, width):
            raise ValueError(f"image of sample '{sample.name}' is {sample.image.shape[1]}x{sample.image.shape[0]} "
                             f"but its prompt set says {width}x{height}")
    if cfg.env.reward == "segmentation" or cfg.env.start == "ideal":
        if sample.truth_mask is None:
            raise ValueError(f"sample '{sample.name}' has no truth mask, needed by env.reward=segmentation and "
                             "env.start=ideal; use env.reward=graph and env.start=initial for unlabelled images")
    if sample.truth_mask is not None and np.shape(sample.truth_mask) != (height, width):
        raise ValueError(f"truth mask of sample '{sample.name}' has shape {np.shape(sample.truth_mask)}, "
                         f"expected ({height}, {width})")


def _with_ideal(prompt_set: PromptSet, positive: np.ndarray, negative: np.ndarray) -> PromptSet:
    """The prompt set extended by the ideal prompts, which win where the two disagree on a patch."""
    kept_positive = prompt_set.positive_indices[~np.isin(prompt_set.positive_indices, negative)]
    kept_negative = prompt_set.negative_indices[~np.isin(prompt_set.negative_indices, positive)]
    return PromptSet(prompt_set.image, prompt_set.original_size, prompt_set.grid,
                     np.concatenate([positive, kept_positive]), np.concatenate([negative, kept_negative]),
                     source=prompt_set.source)


def _build_record(sample: EpisodeSample, reference: ReferenceFeatures, cfg: Config,
                  rng: np.random.Generator) -> _SampleRecord:
    prompt_set = sample.prompt_set
    if cfg.env.start == "ideal":
        positive, negative = sample_ideal_prompts(sample.grid, np.asarray(sample.truth_mask, bool),
                                                  cfg.segmentation.ideal_positive,
                                                  cfg.segmentation.ideal_negative, rng)
        prompt_set = _with_ideal(prompt_set, positive, negative)
    graph = build_graph(sample.grid, sample.target_features, prompt_set, reference, cfg.graph)
    if graph.num_nodes > cfg.env.max_nodes:
        raise ValueError(f"sample '{sample.name}' has a graph of {graph.num_nodes} nodes but env.max_nodes is "
                         f"{cfg.env.max_nodes}; raise env.max_nodes (or lower graph.extra_positive/extra_negative "
                         "or matching.max_positive/max_negative)")
    if cfg.env.start == "ideal":
        graph.set_active(graph.nodes_of(positive, negative))
    elif cfg.env.start == "empty":
        graph.set_active(np.zeros(graph.num_nodes, dtype=bool))
    original_size = sample.prompt_set.original_size
    return _SampleRecord(sample, graph, sample.grid.index_to_original_xy(graph.indices, original_size),
                         sample.grid.patch_centre_pixels(graph.indices, original_size))


def _decode(segmenter: Segmenter, record: _SampleRecord, graphs: Sequence[DualSpaceGraph]) -> tuple:
    """Decode the active prompts of ``graphs`` (all of ``record``'s sample) in one call.

    Prompts are positives then negatives, in node order, as ``PromptSet.point_prompts`` gives them.
    Returns masks (B, H, W) bool and Dice (B,) against the truth mask (None without one).
    """
    sample = record.sample
    if record.embedding is None:
        record.embedding = segmenter.embed(sample.image)
    prompts = [PointPrompts.from_xy(record.node_xy[graph.active & graph.is_positive],
                                    record.node_xy[graph.active & ~graph.is_positive]) for graph in graphs]
    masks, _ = segmenter.decode(record.embedding, prompts)
    masks = np.asarray(masks, dtype=bool)
    expected = (len(graphs), *sample.image.shape[:2])
    if masks.shape != expected:
        raise ValueError(f"segmenter returned masks of shape {masks.shape} for sample '{sample.name}', "
                         f"expected {expected} (one mask per prompt set at the image size)")
    dice = None if sample.truth_mask is None else dice_batch(masks, sample.truth_mask)
    return masks, dice


class PromptEnv(gymnasium.Env):
    """Edit the prompt set of one sample per episode by toggling graph nodes.

    Observation (dict):

    - ``"nodes"`` (max_nodes, F) float32 in [-1, 2]: :meth:`DualSpaceGraph.node_features` (columns
      :data:`gpoa.graph.NODE_FEATURES`), zero rows past the graph's N nodes;
    - ``"valid"`` (max_nodes,) int8: 1 for the N real nodes;
    - ``"globals"`` (5,) float32: :data:`GLOBAL_FEATURES`.

    Actions: ``Discrete(max_nodes + 1)``; ``i < N`` toggles node i, ``max_nodes`` is STOP (the
    episode terminates, reward 0). :meth:`action_masks` marks the valid ones: STOP always; a toggle
    only if it takes no count of active positives / negatives below ``env.min_*`` or above
    ``env.max_*``, and only for a node not yet toggled in this episode (each node changes at most
    once: an undo would only waste steps and lets a greedy policy loop). A start state outside those bounds is allowed (``env.start=empty`` with
    ``env.min_positive=1``, or a prompt file with more negatives than ``env.max_negative``): the
    agent can then only move the count towards them. Episodes are truncated after
    ``env.episode_length`` steps.

    Start state (``env.start``): ``initial`` (the sample's prompt set), ``ideal`` (prompts sampled
    once per sample from the truth mask with :func:`~gpoa.prompts.sample_ideal_prompts`, using
    ``segmentation.ideal_positive/negative`` and the environment's seed; the graph is built from
    the prompt set extended by them), ``empty`` (no active node).

    ``info``: ``score`` (graph score), ``positives``, ``negatives`` (active counts), ``sample``
    (name), and ``dice`` (Dice of the current mask) when a segmenter and a truth mask are there.
    """

    metadata = {"render_modes": []}

    def __init__(self, samples: Sequence[EpisodeSample], reference: ReferenceFeatures, cfg: Config,
                 segmenter: Optional[Segmenter] = None, seed: Optional[int] = None):
        _check_config(cfg)
        if len(samples) == 0:
            raise ValueError("PromptEnv needs at least one sample")
        for sample in samples:
            _check_sample(sample, cfg, segmenter)
        rng = np.random.default_rng(seed)
        records = [_build_record(sample, reference, cfg, rng) for sample in samples]
        self._setup(records, cfg, segmenter, seed)

    def _setup(self, records: list, cfg: Config, segmenter: Optional[Segmenter], seed: Optional[int]) -> None:
        self._records = records
        self._graphs = [record.graph.clone() for record in records]
        self.cfg = cfg
        self._segmenter = segmenter
        self._weights = np.asarray(cfg.env.graph_weights, dtype=np.float64)
        env = cfg.env
        self.max_nodes = env.max_nodes
        self.stop_action = env.max_nodes
        self.action_space = spaces.Discrete(env.max_nodes + 1)
        global_high = np.array([env.max_nodes / max(env.max_positive, 1), env.max_nodes / max(env.max_negative, 1),
                                1.0, 1.0, 1.0], dtype=np.float32)
        self.observation_space = spaces.Dict({
            "nodes": spaces.Box(low=-1.0, high=2.0, shape=(env.max_nodes, len(NODE_FEATURES)), dtype=np.float32),
            "valid": spaces.MultiBinary(env.max_nodes),
            "globals": spaces.Box(low=np.zeros(len(GLOBAL_FEATURES), np.float32), high=global_high,
                                  dtype=np.float32),
        })
        self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._record: Optional[_SampleRecord] = None
        self.graph: Optional[DualSpaceGraph] = None
        self._steps = 0
        self._done = True
        self._mask: Optional[np.ndarray] = None
        self._dice: Optional[float] = None
        self._inside: Optional[np.ndarray] = None
        self._score = 0.0

    def spawn(self, seed: Optional[int] = None) -> PromptEnv:
        """Another environment over the same samples, sharing their graphs' static arrays and the
        segmenter embeddings; its own episode state and random generator (``seed``)."""
        twin = object.__new__(PromptEnv)
        twin._setup(self._records, self.cfg, self._segmenter, seed)
        return twin

    # ----- introspection ------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return len(self._records)

    @property
    def sample(self) -> EpisodeSample:
        """The sample of the current episode."""
        self._require_episode()
        return self._record.sample

    @property
    def mask(self) -> Optional[np.ndarray]:
        """The current mask (H, W) bool, None without a segmenter."""
        return self._mask

    def prompt_set(self, source: str = "env") -> PromptSet:
        """The active prompts of the current episode as a :class:`PromptSet`."""
        self._require_episode()
        return self.graph.to_prompt_set(self._record.sample.prompt_set, source)

    def _require_episode(self) -> None:
        if self.graph is None:
            raise RuntimeError("call reset() before using the environment")

    # ----- Gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple:
        """Start an episode on a sample drawn uniformly (``options={"sample": i}`` picks sample i)."""
        super().reset(seed=seed)
        if options and options.get("sample") is not None:
            index = int(options["sample"])
            if not 0 <= index < len(self._records):
                raise ValueError(f"options['sample']={index} but there are {len(self._records)} samples")
        else:
            index = int(self.np_random.integers(len(self._records)))
        self._record = self._records[index]
        self.graph = self._graphs[index]
        self.graph.copy_state(self._record.graph)
        self._toggled = np.zeros(self.graph.num_nodes, dtype=bool)
        self._steps = 0
        self._done = False
        if self._segmenter is not None:
            record = self._record
            if record.start_mask is None:
                masks, dice = _decode(self._segmenter, record, [self.graph])
                record.start_mask = masks[0]
                record.start_dice = None if dice is None else float(dice[0])
            self._set_mask(record.start_mask, record.start_dice)
        self._score = self.graph.graph_score(self._weights)
        return self._observation(), self._info()

    def step(self, action: int) -> tuple:
        """Toggle node ``action`` or STOP (``action == max_nodes``) → (obs, reward, terminated, truncated, info)."""
        return step_batch([self], [action])[0]

    def action_masks(self) -> np.ndarray:
        """(max_nodes + 1,) bool: which actions are valid now (see the class docstring)."""
        self._require_episode()
        graph = self.graph
        can_remove, can_add = self._allowed_toggles()
        valid = np.zeros(self.max_nodes + 1, dtype=bool)
        write_action_mask(graph.active, graph.category, self._toggled, can_remove, can_add, valid[:graph.num_nodes])
        valid[self.stop_action] = True
        return valid

    def _allowed_toggles(self) -> tuple:
        """(can_remove, can_add), each a pair of bools indexed by category (0 negative, 1 positive)."""
        graph, env = self.graph, self.cfg.env
        positives, negatives = graph.num_positive, graph.num_negative
        return ((negatives - 1 >= env.min_negative, positives - 1 >= env.min_positive),
                (negatives + 1 <= env.max_negative, positives + 1 <= env.max_positive))

    # ----- step internals (shared with step_batch) ------------------------------------------------
    def _check_action(self, action: int) -> None:
        self._require_episode()
        if self._done:
            raise RuntimeError("the episode has ended (STOP or truncation); call reset()")
        if not 0 <= action <= self.stop_action:
            raise ValueError(f"action {action} is outside 0..{self.stop_action}")
        if action == self.stop_action:
            return
        if action >= self.graph.num_nodes:
            raise ValueError(f"action {action} is padding: sample '{self._record.sample.name}' has "
                             f"{self.graph.num_nodes} nodes (STOP is {self.stop_action})")
        if self._toggled[action]:
            raise ValueError(f"action {action} toggles node {action} a second time in this episode; each node "
                             "is toggled at most once per episode (undoing a toggle only wastes steps)")
        category, active = int(self.graph.category[action]), bool(self.graph.active[action])
        can_remove, can_add = self._allowed_toggles()
        if not (can_remove if active else can_add)[category]:
            kind = "positive" if category else "negative"
            bound = "min" if active else "max"
            raise ValueError(f"action {action} toggles a {kind} node beyond env.{bound}_{kind}; "
                             "choose among action_masks()")

    def _set_mask(self, mask: np.ndarray, dice: Optional[float]) -> None:
        self._mask = mask
        self._dice = dice
        self._inside = mask[self._record.node_pixels].astype(np.float32)

    def _finish(self, action: int, dice_before: Optional[float]) -> tuple:
        """Reward, flags, observation and info once the action is applied and the mask decoded."""
        self._steps += 1
        terminated = action == self.stop_action
        score_before, self._score = self._score, self.graph.graph_score(self._weights)
        if terminated:
            reward = 0.0
        elif self.cfg.env.reward == "segmentation":
            reward = self._dice - dice_before - self.cfg.env.step_penalty
        else:
            reward = self._score - score_before - self.cfg.env.step_penalty
        truncated = not terminated and self._steps >= self.cfg.env.episode_length
        self._done = terminated or truncated
        return self._observation(), float(reward), bool(terminated), bool(truncated), self._info()

    def _observation(self) -> dict:
        graph, env = self.graph, self.cfg.env
        nodes = np.zeros((self.max_nodes, len(NODE_FEATURES)), dtype=np.float32)
        graph.node_features(self._inside, out=nodes[:graph.num_nodes])
        valid = np.zeros(self.max_nodes, dtype=np.int8)
        valid[:graph.num_nodes] = 1
        area = 0.0 if self._mask is None else np.count_nonzero(self._mask) / self._mask.size
        globals_ = np.array([graph.num_positive / max(env.max_positive, 1),
                             graph.num_negative / max(env.max_negative, 1),
                             self._steps / env.episode_length,
                             float(self._segmenter is not None),
                             area], dtype=np.float32)
        return {"nodes": nodes, "valid": valid, "globals": globals_}

    def _info(self) -> dict:
        info = {"score": self._score, "positives": self.graph.num_positive, "negatives": self.graph.num_negative,
                "sample": self._record.sample.name}
        if self._dice is not None:
            info["dice"] = self._dice
        return info


def step_batch(envs: Sequence[PromptEnv], actions: Sequence[int]) -> list:
    """Step several environments together → one (obs, reward, terminated, truncated, info) per env.

    All actions are checked before any is applied. Segmenter decodes are grouped by sample: one
    ``segmenter.decode`` call per distinct sample (environments made with :meth:`PromptEnv.spawn`
    share their samples) with the prompt sets of all environments that toggled a node on it.
    """
    if len(envs) != len(actions):
        raise ValueError(f"{len(envs)} environments but {len(actions)} actions")
    if len({id(env) for env in envs}) != len(envs):
        raise ValueError("an environment appears twice in one step_batch call")
    actions = [int(action) for action in actions]
    for env, action in zip(envs, actions):
        env._check_action(action)
    dice_before = [env._dice for env in envs]
    groups: dict = {}
    for env, action in zip(envs, actions):
        if action == env.stop_action:
            continue
        env.graph.toggle(action)
        env._toggled[action] = True
        if env._segmenter is not None:
            groups.setdefault((id(env._segmenter), id(env._record)), []).append(env)
    for group in groups.values():
        masks, dice = _decode(group[0]._segmenter, group[0]._record, [env.graph for env in group])
        for j, env in enumerate(group):
            env._set_mask(masks[j], None if dice is None else float(dice[j]))
    return [env._finish(action, before) for env, action, before in zip(envs, actions, dice_before)]
