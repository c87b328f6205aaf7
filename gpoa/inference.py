"""One target image, arrays in and arrays out: the steps that every GPOA entry point shares.

The predictor (:class:`gpoa.predictor.GPOAPredictor`), the four stages and the experiments all
make prompts and masks with these functions, so there is one way to make each:

1. :func:`gpoa.features.patch_features` — an image's patch features at the precision the feature
   cache keeps;
2. :func:`reference_features` (+ :func:`gpoa.placement.fit_patch_classifier`) — what the reference
   pair(s) say about the object;
3. :func:`propose` — stage 1's initial prompts of one target;
4. :func:`load_optimizer` and :func:`optimize_sample` — stage 3: a trained policy edits one
   target's prompts on its dual-space graph (with the baselines beside it, when asked);
5. :func:`decode_masks` — stage 4: the segmenter's mask of each prompt set.

Files are read and written by the callers, never here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gpoa.agents.greedy import GreedyPolicy, LookaheadRule, run_greedy
from gpoa.agents.policy_file import check_observation, load_policy
from gpoa.config import Config, EnvConfig, GraphConfig
from gpoa.domain import DomainEncoder
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv
from gpoa.envs.oracle import run_oracle
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES, DualSpaceGraph
from gpoa.grid import PatchGrid
from gpoa.io import image_size
from gpoa.matching import ReferenceFeatures, build_reference, count_instances, match_prompts
from gpoa.placement import (
    PatchClassifier,
    PatchScores,
    place_prompts,
    predicted_region,
    reference_foreground_share,
    score_patches,
)
from gpoa.presence import mask_presence_score
from gpoa.prompts import PromptSet, sample_ideal_prompts
from gpoa.runtime import array_digest, content_seed
from gpoa.samples import EpisodeSample
from gpoa.segmenters import Segmenter


# ----- reference ------------------------------------------------------------------------------------
def reference_features(feature_grids: Sequence[np.ndarray], masks: Sequence[np.ndarray], grid: PatchGrid,
                       cfg: Config) -> ReferenceFeatures:
    """The reference of one or several pairs (k-shot): their patch features (rows, cols, D) each and
    their masks (H_i, W_i) bool at their images' sizes, each with foreground (the caller checks it,
    naming the mask). Raises ValueError when no patch is foreground or background."""
    fractions = [grid.mask_fraction(mask) for mask in masks]
    instances = [count_instances(mask) for mask in masks]
    return build_reference(list(feature_grids), fractions, cfg.matching.foreground_fraction, instances)


def taught_reference_payload(feature_grids: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                             grid: PatchGrid) -> dict:
    """What a taught policy file keeps of its references (gpoa.teach), not the images: the patch
    features ``features`` (R, rows, cols, D) float16 (the feature cache's precision, so nothing is
    lost), the masks at grid resolution ``mask_fractions`` (R, rows, cols) float32 (each patch's share
    of foreground pixels) and the objects per reference ``instances``."""
    return {"features": torch.as_tensor(np.stack([np.asarray(f, np.float32) for f in feature_grids]).astype(np.float16)),
            "mask_fractions": torch.as_tensor(np.stack([grid.mask_fraction(mask) for mask in masks]).astype(np.float32)),
            "instances": [count_instances(mask) for mask in masks]}


def taught_reference(payload: dict, cfg: Config) -> ReferenceFeatures:
    """The references a taught policy file keeps (:func:`taught_reference_payload`), as
    :func:`reference_features` makes them from the pairs themselves (the same values)."""
    grids = torch.as_tensor(payload["features"]).float().numpy()
    fractions = torch.as_tensor(payload["mask_fractions"]).float().numpy()
    return build_reference(list(grids), list(fractions), cfg.matching.foreground_fraction,
                           [int(n) for n in payload["instances"]])


#: the key of a prompt file made from a taught policy's references: their digest (taught_reference_digest)
TAUGHT_REFERENCE = "taught_reference"


def taught_reference_digest(reference: ReferenceFeatures) -> str:
    """What identifies a taught policy's references in the prompt files matched against them."""
    return array_digest(reference.features)


def policy_reference(cfg: Config) -> Optional[ReferenceFeatures]:
    """The references of the taught policy that ``optimize.policy`` names (gpoa.teach), which stage 1
    matches every target against as stage 3 does; None when no policy is named or it holds none."""
    if not cfg.optimize.policy:
        return None
    meta = load_policy(Path(cfg.optimize.policy), device="cpu").extra
    return taught_reference(meta["references"], cfg) if "references" in meta else None


# ----- stage 1: initial prompts ------------------------------------------------------------------
def propose(reference: ReferenceFeatures, classifier: PatchClassifier, features: np.ndarray, image: np.ndarray,
            grid: PatchGrid, cfg: Config, name: str = "", window: Optional[np.ndarray] = None) -> PromptSet:
    """Stage 1's prompts for one target: ``features`` (rows, cols, D) of ``image`` (H, W, 3) named
    ``name`` (the prompt file's ``image``). ``window`` (rows * cols,) bool: placement looks for the
    object only on these patches (a clip's search window; every other patch scores below them).

    ``matching.method``: ``placement`` (:func:`gpoa.placement.place_prompts`; its random draws are
    seeded by ``cfg.seed`` and the image's content, so an image gets the same prompts under any
    name and in any task; the prompt set records the placement's confidence) or ``nearest``
    (:func:`gpoa.matching.match_prompts`). The set may have no positive (nearest matching with
    ``mutual_nearest``): the caller decides what that means.
    """
    size = image_size(image)
    if cfg.matching.method == "nearest":
        match = match_prompts(reference, features, cfg.matching)
        return PromptSet(name, size, grid, match.positive_indices, match.negative_indices, source="matching")
    scores = score_patches(reference, features, classifier)
    if window is not None:
        scores = scores.within(window)
    rng = np.random.default_rng(content_seed(cfg.seed, "placement", image))
    placement = place_prompts(scores, grid, reference_foreground_share(reference), cfg.placement, rng)
    return PromptSet(name, size, grid, placement.positive_indices, placement.negative_indices,
                     source="placement", extra={"placement_confidence": round(placement.confidence, 4),
                                                "placement_confident": placement.confident})


def region_confidence(reference: ReferenceFeatures, classifier: PatchClassifier, features: np.ndarray,
                      grid: PatchGrid, cfg: Config, scores: Optional[PatchScores] = None) -> float:
    """How step-like the target's match scores are on the region they predict, in [0, 1]
    (:func:`gpoa.placement.predicted_region`; the value the confidence gate compares with
    ``optimize.min_region_confidence``; ``scores``: the features' :func:`score_patches` against
    ``reference`` and ``classifier`` when the caller has them)."""
    scores = score_patches(reference, features, classifier) if scores is None else scores
    _, _, confidence, _ = predicted_region(scores, grid, reference_foreground_share(reference), cfg.placement)
    return float(np.clip(confidence, 0.0, 1.0))


# ----- stage 3: a policy edits the prompts ----------------------------------------------------------
@dataclass
class Optimizer:
    """A trained policy ready for inference: the greedy policy under the config's gates, the
    hand-made rule under the same gates (None when the policy does not see the lookahead), and the
    graph and environment settings of its training run (``run_cfg``). ``source`` names the policy
    file and its gates in the optimised prompt files."""

    path: Path
    learner: str
    greedy: GreedyPolicy
    rule: Optional[LookaheadRule]
    run_cfg: Config
    in_loop: bool
    source: str
    # below this presence score (gpoa.presence) a target is called absent; None: no target is
    presence_threshold: Optional[float] = None
    # a taught policy's (gpoa.teach): the references every target is matched against (None: the
    # task's or the predictor's own) and the encoder of its domain node columns (gpoa.domain)
    reference: Optional[ReferenceFeatures] = None
    domain: Optional[DomainEncoder] = None


def load_optimizer(policy_path: Path, cfg: Config, feature_key: str, grid: PatchGrid) -> Optimizer:
    """The policy file at ``policy_path``, checked against this version's observation and against the
    features (``feature_key``, ``grid``) of ``cfg``: UsageError naming the file when it does not fit."""
    policy_path = Path(policy_path)
    policy = load_policy(policy_path, device="cpu")
    meta = policy.extra
    domain = DomainEncoder.from_dict(meta["domain"]) if "domain" in meta else None
    check_observation(policy, policy_path, tuple(NODE_FEATURES) + (domain.names if domain is not None else ()),
                      GLOBAL_FEATURES)
    if meta.get("feature_cache_key", feature_key) != feature_key:
        raise UsageError(f"policy '{policy_path}' was trained on '{meta['feature_cache_key']}' features but this "
                         f"config gives '{feature_key}'; run with the features settings the policy was trained with")
    if meta.get("grid") != grid.to_dict():
        raise UsageError(f"policy '{policy_path}' was trained on grid {meta.get('grid')} but this config uses "
                         f"{grid.to_dict()}; run with the features settings the policy was trained with")
    # the observation layout and the start state are fixed by the training run: take its graph and
    # environment settings (an "ideal" start needs ground truth, so inference starts from the prompts)
    trained_env = meta["config"]["env"]
    start = "initial" if trained_env["start"] == "ideal" else trained_env["start"]
    run_cfg = dataclasses.replace(cfg, graph=GraphConfig(**meta["config"]["graph"]),
                                  env=EnvConfig(**{**trained_env, "reward": "graph", "start": start}))
    in_loop = bool(meta.get("segmenter_in_loop"))
    greedy = GreedyPolicy.gated(policy.network, cfg.optimize, in_loop, meta.get("gates"))
    # the hand-made baseline, under the policy's confidence gate: the two edit the same targets
    rule = (LookaheadRule(NODE_FEATURES, min_confidence=greedy.min_confidence, confidence_index=greedy.confidence_index)
            if in_loop and run_cfg.env.lookahead else None)
    # the gates are part of the source: a rerun with other gates is not mistaken for a finished one
    gates = "".join(f" [{name}={value:g}]" for name, value in (("stop_margin", greedy.stop_margin),
                                                                ("min_region_confidence", greedy.min_confidence))
                    if value)
    presence = presence_threshold(cfg, meta)
    if presence is not None:
        gates += f" [presence_threshold={presence:g}]"
    reference = taught_reference(meta["references"], cfg) if "references" in meta else None
    return Optimizer(policy_path, policy.learner, greedy, rule, run_cfg, in_loop,
                     f"gpoa-{policy.learner}:{policy_path}{gates}", presence, reference, domain)


def presence_threshold(cfg: Config, policy_extra: Optional[dict] = None) -> Optional[float]:
    """The presence threshold inference applies: ``optimize.presence_threshold`` when set, else the one
    the policy fitted on its training corpus (``policy_extra``, the policy file's ``extra``); None with
    ``optimize.presence`` false or when neither has one."""
    if not cfg.optimize.presence:
        return None
    if cfg.optimize.presence_threshold is not None:
        return float(cfg.optimize.presence_threshold)
    fitted = (policy_extra or {}).get("presence_threshold")
    return None if fitted is None else float(fitted)


def action_trace(actions: list, graph: DualSpaceGraph) -> list:
    """The actions of an episode as readable entries (node, patch, label), STOP included."""
    return [{"step": i, "action": "stop" if a >= graph.num_nodes else "toggle",
             **({} if a >= graph.num_nodes else {
                 "node": int(a), "patch": int(graph.indices[a]),
                 "label": "positive" if graph.category[a] else "negative"})}
            for i, a in enumerate(actions)]


@dataclass
class Edit:
    """The outcome of one editing episode: the prompt set it ends with, its actions (node indices,
    STOP last unless truncated) on ``graph``, and the episode's final info."""

    prompt_set: PromptSet
    actions: list
    graph: DualSpaceGraph
    info: dict = field(default_factory=dict)

    def trace(self) -> list:
        return action_trace(self.actions, self.graph)


@dataclass
class Optimization:
    """:func:`optimize_sample`'s result: the policy's edit, the segmenter's embedding of the image
    (None when the segmenter is not in the loop) and the comparisons that were asked for:
    ``baselines`` {"random_subset", "topk": PromptSet}, the hand-made ``rule`` and the ``oracle``."""

    policy: Edit
    embedding: Any = None
    baselines: dict = field(default_factory=dict)
    rule: Optional[Edit] = None
    oracle: Optional[Edit] = None
    # the presence score of the initial prompts' mask and the decision (True without a threshold)
    presence_score: Optional[float] = None
    present: bool = True


def baselines(initial: PromptSet, optimized: PromptSet, margin: np.ndarray, rng: np.random.Generator) -> dict:
    """The two baseline prompt sets with the optimised set's counts (capped at the initial counts):
    ``random_subset`` (a random subset of the initial prompts) and ``topk`` (the initial prompts
    that match the reference best).

    ``margin`` (rows * cols,) is each patch's fg − bg nearest-neighbour similarity to the reference.
    """
    n_pos = min(len(optimized.positive_indices), len(initial.positive_indices))
    n_neg = min(len(optimized.negative_indices), len(initial.negative_indices))
    # drawn from the sorted indices: the subset does not depend on the order of the prompt file
    random_pos = np.sort(rng.choice(np.sort(initial.positive_indices), size=n_pos, replace=False))
    random_neg = np.sort(rng.choice(np.sort(initial.negative_indices), size=n_neg, replace=False))
    top_pos = initial.positive_indices[np.argsort(-margin[initial.positive_indices], kind="stable")[:n_pos]]
    top_neg = initial.negative_indices[np.argsort(margin[initial.negative_indices], kind="stable")[:n_neg]]
    make = lambda pos, neg, source: PromptSet(initial.image, initial.original_size, initial.grid, pos, neg, source)  # noqa: E731
    return {"random_subset": make(random_pos, random_neg, "random_subset"), "topk": make(top_pos, top_neg, "topk")}


def optimize_sample(optimizer: Optimizer, sample: EpisodeSample, segmenter: Optional[Segmenter], seed: int,
                    baseline_rng: Optional[np.random.Generator] = None, rule: bool = False,
                    oracle: bool = False) -> Optimization:
    """Stage 3 for one target: the policy edits ``sample.prompt_set`` greedily (deterministic).

    ``segmenter`` is in the loop when the policy was trained with it (``optimizer.in_loop``; the
    sample then needs its image) and decodes for the oracle. Asked for: the ``baselines`` (with
    ``baseline_rng``), the hand-made ``rule`` (when the optimizer has one) and the greedy
    ``oracle`` over the same candidates and start state (when the sample has its truth mask).
    Raises ValueError for a sample the settings cannot play.
    """
    run_cfg = optimizer.run_cfg
    if optimizer.domain is not None:  # a taught policy observes its domain columns
        sample = dataclasses.replace(sample, domain=optimizer.domain)
    bank = EpisodeBank([sample], run_cfg, segmenter if optimizer.in_loop else None, seed=seed)
    env = PromptEnv(bank, run_cfg, seed=seed)
    actions, info, _ = run_greedy(optimizer.greedy, env, options={"sample": 0}, seed=seed)
    result = Optimization(Edit(env.prompt_set(source=optimizer.source), actions, env.graph, info))
    if baseline_rng is not None:
        graph = env.graph
        margin = np.zeros(sample.grid.num_patches, dtype=np.float32)
        margin[graph.indices] = graph.match_score
        result.baselines = baselines(sample.prompt_set, result.policy.prompt_set, margin, baseline_rng)
    if rule and optimizer.rule is not None:  # the hand-made baseline on the same candidates and observations
        rule_env = PromptEnv(bank, run_cfg, seed=seed)
        rule_actions, rule_info, _ = run_greedy(optimizer.rule, rule_env, options={"sample": 0}, seed=seed)
        result.rule = Edit(rule_env.prompt_set(source="lookahead_rule"), rule_actions, rule_env.graph, rule_info)
    if oracle and sample.truth_mask is not None:
        oracle_bank = bank if optimizer.in_loop else EpisodeBank([sample], run_cfg, segmenter, seed=seed)
        oracle_env = PromptEnv(oracle_bank, run_cfg, seed=seed)
        oracle_actions, oracle_info = run_oracle(oracle_env, options={"sample": 0}, seed=seed)
        result.oracle = Edit(oracle_env.prompt_set(source="oracle"), oracle_actions, oracle_env.graph, oracle_info)
    if optimizer.in_loop:
        result.embedding = bank.embedding(bank.record(0))
    if optimizer.presence_threshold is not None:
        if optimizer.in_loop and run_cfg.env.start == "initial":
            mask = bank.start_mask(bank.record(0))[0]  # the initial prompts' mask, decoded for the episode
        else:
            if sample.image is None:
                raise ValueError(f"sample '{sample.name}' has no image; the presence decision decodes it")
            result.embedding = result.embedding if result.embedding is not None else segmenter.embed(sample.image)
            mask = decode_masks(segmenter, sample.image, [sample.prompt_set], result.embedding)[0]
        result.presence_score = mask_presence_score(mask, sample.reference, sample.target_features)
        result.present = result.presence_score >= optimizer.presence_threshold
        decision = {"present": bool(result.present), "presence_score": round(result.presence_score, 4)}
        result.policy.prompt_set = dataclasses.replace(result.policy.prompt_set,
                                                       extra={**result.policy.prompt_set.extra, **decision})
    return result


def ideal_prompts(truth: np.ndarray, grid: PatchGrid, cfg: Config, name: str = "") -> PromptSet:
    """The ``ideal`` prompt set of a target whose true mask is ``truth`` (H, W) bool: the segmenter's
    ceiling (:func:`gpoa.prompts.sample_ideal_prompts` with ``segmentation.ideal_positive`` and
    ``ideal_negative``, drawn with a generator seeded by the run seed and the mask's content)."""
    rng = np.random.default_rng(content_seed(cfg.seed, "ideal", truth))
    positive, negative = sample_ideal_prompts(grid, truth, cfg.segmentation.ideal_positive,
                                              cfg.segmentation.ideal_negative, rng)
    return PromptSet(name, (truth.shape[1], truth.shape[0]), grid, positive, negative, source="ideal")


# ----- stage 4: masks ------------------------------------------------------------------------------
def decode_masks(segmenter: Segmenter, image: np.ndarray, prompt_sets: Sequence[PromptSet],
                 embedding: Any = None) -> np.ndarray:
    """The segmenter's masks (B, H, W) bool of ``prompt_sets`` on ``image`` (H, W, 3), decoded in one
    call; ``embedding`` is the segmenter's embedding of ``image`` when it is at hand (else it is made)."""
    if embedding is None:
        embedding = segmenter.embed(image)
    masks, _ = segmenter.decode(embedding, [prompt_set.point_prompts() for prompt_set in prompt_sets])
    return np.asarray(masks, dtype=bool)
