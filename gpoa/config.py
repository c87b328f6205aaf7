"""One dataclass tree for every setting, loaded from YAML and overridden with ``--set key=value``.

The defaults ARE the method as measured (docs/results.md): the embedded default backends
(handcrafted features, classical segmenter), placement prompts, 16 + 16 spread candidates, the
lookahead with its shield, the agreement prior, the confidence gate and the Double DQN settings
that ``make demo`` trains with. A config file only says what differs (data, other backends).

``load_config(path, overrides)`` is the only way stages get a :class:`Config`. Unknown keys and
values of the wrong type raise :class:`~gpoa.errors.UsageError` naming the key. Every range and
choice is checked in one place, :func:`check_settings` (``load_config`` calls it, and so does
every :class:`~gpoa.envs.EpisodeBank` for configs built in code). ``save_config`` writes the
resolved tree beside an output so the run can be repeated with ``--config``.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from gpoa.errors import UsageError


@dataclass
class FeaturesConfig:
    """Patch-feature backend. ``handcrafted`` is the embedded default; ``dinov2`` is the paper's."""

    backend: str = "handcrafted"
    # timm model name for the dinov2 backend: vit_{small,base,large,giant}_patch14_dinov2
    model: str = "vit_large_patch14_dinov2"
    # local DINOv2 weights, Meta's original format (dinov2_vitl14_pretrain.pth) or timm's
    checkpoint: str = "checkpoints/dinov2_vitl14_pretrain.pth"
    # images are resized to working_size x working_size before feature extraction
    working_size: int = 560
    patch_size: int = 14


@dataclass
class SegmenterConfig:
    """Promptable segmenter. ``classical`` is the embedded default; ``sam`` is the paper's; ``sam2``
    (SAM 2.1) and ``sam_hq`` (HQ-SAM) are the same door for their models (checkpoints/README.md)."""

    backend: str = "classical"
    # the model size: sam vit_b, vit_l or vit_h (segment-anything's registry); sam2 hiera_t,
    # hiera_s, hiera_b+ or hiera_l (SAM 2.1's configs); sam_hq vit_b, vit_l, vit_h or vit_tiny
    model_type: str = "vit_l"
    checkpoint: str = "checkpoints/sam_vit_l_0b3195.pth"
    # which mask to keep per prompt set: "single" (the one-mask output), "best" (highest predicted
    # IoU of the three), or "0", "1", "2" (a fixed multimask index; sam and sam2). sam_hq takes
    # single or best: it adds its HQ mask to the kept SAM mask, one mask per set either way
    multimask: str = "single"
    # sam, sam2 and sam_hq: "exact" decodes prompt sets of equal size together (one mask-decoder
    # call per distinct size; each mask equals the official predictor's for its set alone); "pad"
    # makes one call for all sets, padding shorter ones with the "not a point" label -1. The models
    # attend to the pad tokens, so a padded set's mask can differ slightly from its unpadded mask.
    sam_batching: str = "exact"
    # sam_hq: keep the HQ mask alone instead of SAM's mask plus the HQ mask (HQ-SAM's default: off)
    hq_token_only: bool = False
    # classical backend: superpixels per image, and the edge sharpness of the region graph
    n_segments: int = 900
    compactness: float = 12.0
    beta: float = 8.0
    # classical backend: pull of every region towards background when no seed decides it
    background_prior: float = 0.001
    # classical backend: weight of a mask prompt (gpoa.segmenters.with_mask_prompt; gpoa track's
    # carried mask), the tie of every region to the prompt's probability against edge weights in (0, 1]
    mask_prompt_weight: float = 0.3


@dataclass
class MatchingConfig:
    """Stage 1: how the initial prompts are proposed from the reference."""

    # "placement": score every target patch against the reference, read the scores as a predicted
    # object region and place spread positives inside it and negatives in a ring around it
    # (gpoa/placement.py, settings in the placement section); "nearest": the paper's matching,
    # each reference patch's nearest target patch is a prompt (settings below)
    method: str = "placement"
    # a reference patch is foreground when at least this share of its pixels is in the mask,
    # background when none is
    foreground_fraction: float = 0.5
    # keep a target match only when the reference patch is also its nearest neighbour
    mutual_nearest: bool = False
    # the best-scoring prompts kept per image (0 = keep all matches)
    max_positive: int = 0
    max_negative: int = 0


@dataclass
class PlacementConfig:
    """matching.method=placement: how prompts are placed (gpoa/placement.py). The defaults are
    chosen for reasons that hold on any image (the placement module's docstring):

    ``ranking``: which score orders the patches into the region: ``"margin"``, ``"logistic"`` or
    ``"fusion"`` (mean of the two views' ranks; needs both). Region size and confidence do not
    depend on it.
    ``n_positive`` / ``n_negative``: prompts per image (the ideal sampler's 8 + 8).
    ``min_share`` / ``max_share``: the region holds between these multiples of the reference's
    foreground share of the patches (at least one patch); inside that range its size is the
    number of patches with a positive margin. ``min_share`` 1: the margin vote undercounts under
    appearance changes, so it may only enlarge the region; ``max_share`` 2: objects change size
    between images of one task, rarely by more than 2x.
    ``keep_ratio``: a connected piece of the region is kept when its score mass (summed rank score
    above the region's threshold) is at least this share of the heaviest piece's (1: only the
    heaviest; 0: all).
    ``interior_depth``: positives go on patches at least this far (chessboard, patch units) from
    their piece's edge, or on the piece's deepest patches where none is that deep (1: anywhere).
    ``ring_inner`` / ``ring_outer``: negatives go on patches whose distance to the kept region is
    in (ring_inner, ring_outer] (Euclidean, patch units; the ideal sampler's ring is 2.5 patches);
    the ring widens to every patch beyond ``ring_inner``, then to every patch, when it holds fewer
    than ``n_negative`` patches below the threshold.
    ``min_correlation``: the confidence check; below it for every view, pieces are kept with
    ``uncertain_keep_ratio`` instead of ``keep_ratio`` (0.5: the region explains a quarter of a
    view's variance; -1 switches the check off).
    ``regularisation``: L2 weight of the logistic regression (``gpoa.placement.fit_patch_classifier``).
    """

    # patch ranking: "margin" (nearest-neighbour fg - bg similarity), "logistic" or "fusion"
    ranking: str = "margin"
    n_positive: int = 8
    n_negative: int = 8
    # the predicted region holds between these multiples of the reference's foreground share
    min_share: float = 1.0
    max_share: float = 2.0
    # connected pieces of the region lighter than this share of the heaviest are dropped
    keep_ratio: float = 0.25
    # positives at least this many patches inside their piece's edge
    interior_depth: int = 2
    # negatives in the ring (ring_inner, ring_outer] patches outside the region
    ring_inner: float = 1.0
    ring_outer: float = 2.5
    # below this score-region correlation for every view the placement hedges over all pieces
    min_correlation: float = 0.5
    uncertain_keep_ratio: float = 0.0
    # L2 weight of the logistic patch classifier fitted on the reference
    regularisation: float = 0.01


@dataclass
class SegmentationConfig:
    """Stage 4: decode prompt sets, write masks and the metrics table."""

    # extra prompt folders to evaluate besides initial_indices/ and optimized_indices/
    prompts: list = field(default_factory=list)
    # output folder; empty means DATASET/results
    out: str = ""
    # the "ideal" upper-bound prompt set sampled from target_mask/
    ideal_positive: int = 8
    ideal_negative: int = 8
    overlays: bool = True


@dataclass
class GraphConfig:
    """The dual-space graph over candidate prompt patches of one target."""

    # next-best-matching patches added as inactive candidates besides the initial prompts, so the
    # agent can add real candidates (ranked by fg-minus-bg similarity, resp. bg-minus-fg); 16 + 16
    # beside the 8 + 8 initial prompts
    extra_positive: int = 16
    extra_negative: int = 16
    # draw the negative candidates from patches within this many patches of an initial positive
    # (where a negative delimits the object); 0 draws them from the whole image
    negative_ring: float = 6.0
    # spread the positive candidates: each one at least this many patches from every positive
    # prompt and every other positive candidate, so that they reach other instances and the
    # unprompted parts of the object instead of crowding the best match; 0 takes the top ones
    positive_spacing: float = 3.0
    # the same for the negative candidates (from the negative prompts and each other)
    negative_spacing: float = 2.0
    # fill the match-context node columns: the share of the patches within 3 and 6 patches of a
    # node that match the reference foreground better than its background. Tells an object apart
    # from small lookalike fragments (a patch of a long membrane has lookalike neighbours, a patch
    # of a short fibre few); misleads when distractors are as large as the object. Off: zeros
    match_context: bool = False


@dataclass
class EnvConfig:
    """The prompt-editing environment."""

    # "segmentation": change in Dice against the training mask (segmenter in the loop);
    # "graph": label-free change of the graph score (weights below)
    reward: str = "segmentation"
    # start state of an episode: "initial" (the prompt file), "ideal" (sampled from the mask), "empty"
    start: str = "initial"
    episode_length: int = 10
    # which toggles are allowed: "toggle" (any node), "activate" (add candidates only) or
    # "deactivate" (remove prompts only; Point Prompt Defender's defender)
    edits: str = "toggle"
    # let the agent see what each toggle would do to the mask (the segmenter decodes every
    # one-toggle variant of the current prompts each step: gpoa/envs/mask_view.py); off: zeros
    lookahead: bool = True
    # with the lookahead: refuse (mask out) every toggle after which the mask's agreement with the
    # predicted region would drop by more than this (soft Dice); -1 switches the shield off. The
    # edits that flood the background are refused on any image, in training and at inference
    shield: float = 0.02
    # segmentation reward: a loss of Dice counts this many times (1: a change in Dice as it is; 2:
    # the policy edits only where it expects gains to clearly outweigh losses)
    harm_weight: float = 2.0
    # subtracted from the reward of every toggle (not of STOP): moves that change nothing cost
    # something, so the agent stops once no toggle is worth it instead of filling the episode
    step_penalty: float = 0.002
    # bounds on active prompts; toggles that would leave them are masked out
    min_positive: int = 1
    max_positive: int = 40
    min_negative: int = 0
    max_negative: int = 40
    # observation padding: graphs with more nodes are rejected with a clear error (the default
    # graph has at most 8 + 8 prompts and 16 + 16 candidates)
    max_nodes: int = 64
    # node columns that mean something only within one domain (gpoa/domain.py), appended to every
    # observation: a taught policy's (gpoa/teach.py); 0 for a policy that serves every domain
    domain_inputs: int = 0
    # graph reward weights: positive feature compactness, positive-negative feature separation,
    # positive spatial spread, negative spatial spread, positive-to-nearest-negative distance
    graph_weights: list = field(default_factory=lambda: [5.0, 5.0, 1.0, 1.0, 1.0])


@dataclass
class AgentConfig:
    """Which learner trains the policy (gpoa/agents/__init__.py: LEARNERS)."""

    # "dqn" (Double DQN), "ppo" (PPO with action masking) or "ppd" (Point Prompt Defender:
    # attacker and defender, the defender kept)
    learner: str = "dqn"
    # a prior on the policy's scores: toggling a node scores this times the lookahead's change of
    # the mask's agreement with the predicted region (soft Dice, gpoa/envs/mask_view.py) plus what
    # the network adds. The network learns only the correction to "an edit is worth what it does to
    # the agreement", a signal that means the same on any image; 0: no prior. Needs env.lookahead.
    # 1: the lookahead's own unit (an edit is worth its change of agreement, in Dice)
    agreement_prior: float = 1.0


@dataclass
class DQNConfig:
    """Double DQN hyperparameters (``make demo``'s; the attack-for-defense paper's where it gives them)."""

    learning_rate: float = 1e-3
    batch_size: int = 128
    buffer_size: int = 50000
    gamma: float = 0.8
    target_update: int = 100
    epsilon_start: float = 1.0
    epsilon_end: float = 0.1
    # share of train.total_steps over which epsilon decays linearly
    epsilon_fraction: float = 0.5
    learning_starts: int = 256
    train_frequency: int = 2
    hidden: int = 128
    # layers of the shared per-node encoder φ (1 or 2)
    node_layers: int = 1
    max_grad_norm: float = 10.0


@dataclass
class PPOConfig:
    """PPO with invalid-action masking (gpoa/agents/ppo.py); CleanRL's defaults where they fit."""

    learning_rate: float = 3e-4
    # steps of every environment per rollout (a rollout holds num_steps x train.parallel_envs transitions)
    num_steps: int = 32
    num_minibatches: int = 4
    update_epochs: int = 4
    gamma: float = 0.8
    gae_lambda: float = 0.9
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    # stop an update's epochs early once the approximate KL exceeds this (0: never)
    target_kl: float = 0.0
    anneal_lr: bool = True
    hidden: int = 128
    node_layers: int = 1


@dataclass
class PPDConfig:
    """Point Prompt Defender (gpoa/agents/adversarial.py); both roles learn with the dqn settings."""

    # the attacker acts for T steps, T drawn uniformly from [low, high] each episode
    attack_steps: list = field(default_factory=lambda: [1, 4])
    # the defender's edits: "deactivate" (the paper) or "toggle"
    defender_edits: str = "deactivate"


@dataclass
class TrainConfig:
    """train_GPOA.py: which run, where the episodes come from, how often to evaluate."""

    # run name: checkpoints/<run>/; empty means a time stamp
    run: str = ""
    # the training budget of every learner: environment transitions in all
    total_steps: int = 12000
    checkpoints: str = "checkpoints"
    # share of training images held out for the periodic greedy evaluation
    eval_fraction: float = 0.2
    eval_every: int = 4000
    # environments stepped together (their decodes are batched per image)
    parallel_envs: int = 8
    # episode records (graph, segmenter embedding, start mask) kept in memory at once; 0 keeps all
    bank_capacity: int = 0
    # torch threads for the network updates on the CPU: the node-set network is small, and on a
    # busy machine extra threads wait on each other (1 was several times faster than 2 here);
    # 0 keeps torch's default
    cpu_threads: int = 1
    # continue the run's last checkpoint (train.run, or the most recent run) instead of starting anew
    resume: bool = False


@dataclass
class OptimizeConfig:
    """test_GPOA.py: which policy to run."""

    # policy checkpoint; empty means the best checkpoint of the most recent run under train.checkpoints
    policy: str = ""
    # do-no-harm gate: the policy toggles a node only when the node's score beats STOP's by more
    # than this (for DQN, the expected gain in Dice); 0 takes every edit the policy prefers to STOP.
    # Empty: the value a taught policy calibrated on its labelled pairs (gpoa.teach), else 0
    stop_margin: Optional[float] = None
    # second gate: on a target whose predicted region has a confidence (how step-like the match
    # scores are on it, gpoa.placement) below this, the policy keeps the start set, since its edits
    # follow that region; 0 turns it off. Needs the segmenter in the loop (the policies of
    # env.reward=segmentation); ignored for the others. Empty: a taught policy's calibrated value,
    # else 0.5: placement's own threshold for a trustworthy region (placement.min_correlation), not
    # a tuned value
    min_region_confidence: Optional[float] = None
    # also write oracle_indices/: the greedy oracle that reads target_mask/ (evaluation yardstick)
    oracle: bool = False
    # presence (gpoa.presence): a target whose initial mask does not hold what the reference's object
    # looks like (presence score below the threshold) is called absent and gets an empty mask; off by
    # default: with the threshold fitted on the generated corpus it also empties 11 of the 30 membrane
    # demo targets (thin objects score low), see docs/results.md
    presence: bool = False
    # the presence score's threshold; empty takes the one the policy fitted on its training corpus (at
    # the equal error rate); with neither, no target is called absent
    presence_threshold: Optional[float] = None

    def gates(self, calibrated: Optional[dict] = None) -> tuple:
        """(stop_margin, min_region_confidence) as inference applies them: each as set here, else the
        value in ``calibrated`` (a taught policy's ``gates``, gpoa.teach), else the built-in default."""
        calibrated = calibrated or {}
        return tuple(float(value if value is not None else calibrated.get(name, default))
                     for name, value, default in (("stop_margin", self.stop_margin, DEFAULT_STOP_MARGIN),
                                                  ("min_region_confidence", self.min_region_confidence,
                                                   DEFAULT_MIN_REGION_CONFIDENCE)))


#: the inference gates without a setting and without a taught policy's calibration (OptimizeConfig.gates)
DEFAULT_STOP_MARGIN = 0.0
DEFAULT_MIN_REGION_CONFIDENCE = 0.5


@dataclass
class TeachConfig:
    """gpoa teach (gpoa/teach.py): what a few labelled pairs of ONE domain teach GPOA, each part
    chosen by the leave-one-out Dice of the labelled pairs."""

    # the policy file written (gpoa teach --out)
    out: str = ""
    # the labelled pairs: a domain folder's first labelled + 1 pairs (stems sorted: the first is
    # the reference), a dataset folder's reference pair(s) and first `labelled` training pairs; 0: all
    labelled: int = 0
    # the reference sets compared: the labelled pairs ranked by how well each alone prompts the
    # others, the first n of them for every n here (0: all of them)
    reference_counts: list = field(default_factory=lambda: [1, 2, 3, 5, 8, 0])
    # the agent's node columns that mean something only within the domain (gpoa/domain.py): the
    # patch classifier's two and the first feature_axes principal axes of the patch features;
    # domain_inputs false: none (the agent sees what every policy sees)
    domain_inputs: bool = True
    feature_axes: int = 8
    # a policy file to start the agent from (gpoa teach --init; its graph and environment settings
    # come with it); empty: a new network of `hidden` units
    init: str = ""
    hidden: int = 64
    # the agent learns the change in Dice of every toggle at the states the greedy oracle and the
    # hand-made rule visit, then this many times more at the states it visits itself (DAgger)
    rounds: int = 1
    # the fit of the node scores to those changes (a Huber loss, plus rank_weight times a cross-entropy
    # of which action is best at rank_temperature, in Dice); the passes over the states are chosen
    # out of fold among `epochs` (0: the policy of --init as it is; left out without one); Adam's
    # step size and weight decay, states per step
    rank_weight: float = 1.0
    rank_temperature: float = 0.02
    epochs: list = field(default_factory=lambda: [0, 20, 60])
    learning_rate: float = 0.001
    weight_decay: float = 0.0001
    batch_size: int = 64
    # the gates are calibrated on out-of-fold predictions: the labelled pairs in this many folds,
    # each predicted by an agent trained on the others
    folds: int = 3
    # the values tried for optimize.stop_margin and optimize.min_region_confidence
    stop_margins: list = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.02])
    min_region_confidences: list = field(default_factory=lambda: [0.0, 0.25, 0.5])


@dataclass
class TrackConfig:
    """gpoa track and ``GPOAPredictor.track``: what a clip adds to the per-frame step (gpoa/video.py)."""

    # "gpoa": GPOA's tracker (gpoa/video.py); "sam2_video": SAM 2's video predictor propagates the first
    # mask and GPOA's optimised points correct the frames where it disagrees with the reference's match
    engine: str = "gpoa"
    # the dense optical flow (OpenCV's DIS) that carries the previous mask to the frame: ultrafast, fast, medium
    flow: str = "medium"
    # the carried mask as the segmenter's mask prompt (SAM's mask_input; gpoa.segmenters.with_mask_prompt)
    mask_prompt: bool = True
    # appearance gate: positives go only on the carried mask's patches that look like the first frame's object
    # (closer to its foreground than its background); where none does, the frame is searched with the first
    # frame's reference as a single image is (re-detection)
    gate: bool = True
    # with the gate: the region the first frame's reference predicts within regrow_radius patches of the previous
    # mask adds its object-like patches to the carried region (what the carried mask lost comes back; 0: off)
    regrow_radius: float = 2.0
    # where the object is lost (the gate found nothing, or the last mask was empty) it is looked for within
    # search_radius patches of where it was last seen, k times that after k frames without it; where nothing
    # there looks like it, the frame's mask is empty (hidden)
    search_radius: float = 3.0
    # prompt propagation: the previous frame's optimised points followed by pyramidal Lucas-Kanade join the
    # initial prompts; a point is dropped when the backward pass misses it by more than point_error pixels
    propagate_points: bool = True
    point_error: float = 1.0
    # memory, the references each frame is matched against: the first frame, the last memory_recent accepted
    # frames and every memory_every-th accepted frame (0: none), at most memory_size frames in all. Every
    # change refits the patch classifier; with or without the last frame J moved by less than half a point
    # on the tuning clips (docs/experiment-log.md), so by default every 10th accepted frame, the last 3 kept
    memory_recent: int = 0
    memory_every: int = 10
    memory_size: int = 4
    # drift guard: a mask enters memory only when its Dice with the carried mask or with the region the first
    # frame's reference predicts is at least this
    guard: float = 0.5
    # the classical segmenter: each frame's mask as given out has its edge placed at pixel level
    # (ClassicalSegmenter.refine_edges); what the next frame is carried from is the segmenter's own mask
    refine_edges: bool = True
    # gpoa track's overlay video with the prompts drawn: "mp4" (OpenCV's writer), "gif" or "none"
    overlay: str = "mp4"


@dataclass
class ServeConfig:
    """``gpoa serve``: the local web page (gpoa/serve); ``--host`` and ``--port`` override the first two."""

    # 127.0.0.1 answers this machine only; 0.0.0.0 (or a network address) every machine that reaches it
    host: str = "127.0.0.1"
    # 0: any free port (the server prints the address it got)
    port: int = 7860
    # the largest image accepted, width x height in pixels: a larger one is refused, never downscaled
    max_pixels: int = 40_000_000
    # the largest file accepted in one upload, in megabytes (an uncompressed 40-megapixel RGB TIFF is 120 MB)
    max_upload_mb: float = 200.0


@dataclass
class Config:
    # the tasks: dataset folders (data/README.md), domain folders (<domain>/image + <domain>/mask) or
    # folders of them; --data DIR (repeatable) replaces this list
    data: list = field(default_factory=lambda: ["data/demo/membrane"])
    # outputs of domain folders, which are never written to: WORKSPACE/<domain>/
    workspace: str = "outputs"
    # auto picks cuda, then mps, then cpu
    device: str = "auto"
    seed: int = 0
    # recompute outputs that already exist instead of resuming
    overwrite: bool = False
    # "i/N": this process handles the i-th of N shares of the images (Slurm arrays, by hand);
    # empty: torchrun's RANK / WORLD_SIZE, or all of them
    shard: str = ""
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ppd: PPDConfig = field(default_factory=PPDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    teach: TeachConfig = field(default_factory=TeachConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check ``value`` against the annotated type ``kind``; accept ints for floats, strings from ``--set``."""
    origin = typing.get_origin(kind)
    if origin is Union:  # Optional[X]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if kind is list or origin is list:
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise UsageError(f"config key '{key}' expects a list like [a, b] or a,b, got {value!r}") from None
        elif isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise UsageError(f"config key '{key}' expects a list, got {value!r}")
        return list(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UsageError(f"config key '{key}' expects true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise UsageError(f"config key '{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UsageError(f"config key '{key}' expects an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UsageError(f"config key '{key}' expects a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"config key '{key}' expects a string, got {value!r}")
    raise UsageError(f"config key '{key}' has an unsupported type {kind!r}")


def _apply(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise UsageError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    types = _field_types(type(obj))
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(sorted(types))
            raise UsageError(f"unknown config key '{full}' (known keys here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, types[key]))


def _parse_set(item: str) -> tuple[list[str], str]:
    """``key.sub=value`` → (["key", "sub"], "value"); the value stays a string, typed by :func:`_coerce`
    (parsing it as YAML here would turn the string settings ``run=010`` into ``'8'`` and ``run=yes`` into an error)."""
    if "=" not in item:
        raise UsageError(f"--set expects key=value (e.g. --set segmenter.backend=sam), got '{item}'")
    key, raw = item.split("=", 1)
    return key.strip().split("."), raw


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list] = None) -> Config:
    """Defaults, then the YAML file at ``path``, then each ``key.sub=value`` of ``overrides``."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file '{path}' does not exist; pass an existing YAML file to --config")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"config file '{path}' is not valid YAML: {exc}".splitlines()[0]) from None
        _apply(cfg, values)
    return with_overrides(cfg, overrides or [])


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A checked copy of ``cfg`` with each ``key.sub=value`` of ``overrides`` applied in order (what
    ``--set`` does); ``cfg`` itself is not changed."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        keys, value = _parse_set(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested)
    validate(cfg)
    return cfg


#: fields that must be at least 1 (counts, sizes, periods)
POSITIVE_FIELDS = ("features.working_size", "features.patch_size", "segmenter.n_segments", "env.episode_length",
                   "env.max_nodes", "dqn.batch_size", "dqn.buffer_size", "dqn.target_update", "dqn.train_frequency",
                   "dqn.hidden", "train.eval_every", "train.parallel_envs", "placement.n_positive",
                   "placement.interior_depth", "teach.hidden", "teach.batch_size", "serve.max_pixels")
#: fields that must be at least 0
NON_NEGATIVE_FIELDS = ("matching.max_positive", "matching.max_negative", "segmentation.ideal_positive",
                       "segmentation.ideal_negative", "graph.extra_positive", "graph.extra_negative",
                       "graph.negative_ring", "graph.positive_spacing", "graph.negative_spacing",
                       "env.min_positive", "env.max_positive", "env.min_negative", "env.max_negative",
                       "env.step_penalty", "env.harm_weight", "env.domain_inputs", "train.total_steps", "dqn.learning_starts",
                       "train.bank_capacity", "train.cpu_threads", "optimize.stop_margin",
                       "optimize.min_region_confidence", "placement.n_negative", "placement.ring_inner",
                       "teach.labelled", "teach.feature_axes", "teach.rounds", "teach.weight_decay",
                       "teach.rank_weight", "track.point_error", "track.memory_recent", "track.memory_every",
                       "track.search_radius", "track.regrow_radius")

MATCHING_METHODS = ("placement", "nearest")
#: how placement ranks the patches: one view, or the mean of the two views' ranks
RANKINGS = ("margin", "logistic", "fusion")
#: the environment's rewards, start states and edits (gpoa/envs)
REWARDS = ("segmentation", "graph")
STARTS = ("initial", "ideal", "empty")
EDITS = ("toggle", "activate", "deactivate")
#: the settings that pick one of a few methods, and their choices
CHOICES = {"matching.method": MATCHING_METHODS, "placement.ranking": RANKINGS, "env.reward": REWARDS,
           "env.start": STARTS, "env.edits": EDITS, "track.engine": ("gpoa", "sam2_video"),
           "track.flow": ("ultrafast", "fast", "medium"), "track.overlay": ("mp4", "gif", "none")}


def check_settings(cfg: Config) -> None:
    """Raise ValueError, naming the key, for settings that no run can use: the one place where
    ranges and choices are checked (:func:`load_config` turns the error into a UsageError; every
    :class:`~gpoa.envs.EpisodeBank` calls it for configs built in code)."""
    def value(key: str):
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    for key in POSITIVE_FIELDS:
        if value(key) < 1:
            raise ValueError(f"config key '{key}' must be at least 1, got {value(key)}")
    for key in NON_NEGATIVE_FIELDS:
        if value(key) is not None and value(key) < 0:  # None: an optional setting left empty
            raise ValueError(f"config key '{key}' must not be negative, got {value(key)}")
    for key, choices in CHOICES.items():
        if value(key) not in choices:
            raise ValueError(f"config key '{key}' must be one of {', '.join(choices)}, got '{value(key)}'")
    weights = cfg.env.graph_weights
    try:
        numbers = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"config key 'env.graph_weights' must be 5 numbers, got {weights!r}") from None
    if len(numbers) != 5:
        raise ValueError(f"config key 'env.graph_weights' must be 5 numbers, got {len(numbers)}")
    if cfg.agent.agreement_prior and not cfg.env.lookahead:
        raise ValueError("config key 'agent.agreement_prior' needs env.lookahead: true (the prior reads the "
                         "lookahead's change of agreement); set env.lookahead: true or agent.agreement_prior: 0")
    for kind in ("positive", "negative"):
        low, high = getattr(cfg.env, f"min_{kind}"), getattr(cfg.env, f"max_{kind}")
        if low > high:
            raise ValueError(f"config keys env.min_{kind}={low} and env.max_{kind}={high}: the minimum must not "
                             "exceed the maximum")
    placement = cfg.placement
    if not 0 < placement.min_share <= placement.max_share:
        raise ValueError(f"config keys placement.min_share={placement.min_share} and placement.max_share="
                         f"{placement.max_share} must satisfy 0 < min_share <= max_share")
    for key in ("keep_ratio", "uncertain_keep_ratio"):
        if not 0 <= getattr(placement, key) <= 1:
            raise ValueError(f"config key 'placement.{key}' must be in [0, 1], got {getattr(placement, key)}")
    if not placement.ring_inner < placement.ring_outer:
        raise ValueError(f"config keys placement.ring_inner={placement.ring_inner} and placement.ring_outer="
                         f"{placement.ring_outer} must satisfy ring_inner < ring_outer")
    if placement.regularisation <= 0:
        raise ValueError(f"config key 'placement.regularisation' must be positive, got {placement.regularisation}")
    if cfg.track.memory_size < 1:
        raise ValueError(f"config key 'track.memory_size' must be at least 1 (the first frame), got "
                         f"{cfg.track.memory_size}")
    if not 0 <= cfg.track.guard <= 1:
        raise ValueError(f"config key 'track.guard' must be in [0, 1] (a Dice), got {cfg.track.guard}")
    if not 0 <= cfg.serve.port <= 65535:
        raise ValueError(f"config key 'serve.port' must be in [0, 65535] (0: any free port), got {cfg.serve.port}")
    if cfg.serve.max_upload_mb <= 0:
        raise ValueError(f"config key 'serve.max_upload_mb' must be positive, got {cfg.serve.max_upload_mb}")
    if not cfg.serve.host.strip():
        raise ValueError("config key 'serve.host' is empty; use 127.0.0.1 (this machine only) or an address")
    check_teach(cfg.teach)


def check_teach(teach: TeachConfig) -> None:
    """The checks of :func:`check_settings` for the ``teach`` section."""
    if teach.folds < 2:
        raise ValueError(f"config key 'teach.folds' must be at least 2 (each fold is predicted by an agent trained "
                         f"on the others), got {teach.folds}")
    for key in ("learning_rate", "rank_temperature"):
        if getattr(teach, key) <= 0:
            raise ValueError(f"config key 'teach.{key}' must be positive, got {getattr(teach, key)}")
    for key, low, high in (("reference_counts", 0, None), ("epochs", 0, None), ("stop_margins", 0, None),
                           ("min_region_confidences", 0, 1)):
        values = getattr(teach, key)
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"config key 'teach.{key}' must be a list of numbers, got {values!r}") from None
        if not numbers or any(v < low or (high is not None and v > high) for v in numbers):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"config key 'teach.{key}' must be a non-empty list of numbers {bounds}, got {values!r}")
    for key in ("reference_counts", "epochs"):
        if any(float(n) != int(float(n)) for n in getattr(teach, key)):
            raise ValueError(f"config key 'teach.{key}' must be whole numbers, got {getattr(teach, key)!r}")
    if sorted(set(int(n) for n in teach.epochs)) != [int(n) for n in teach.epochs]:
        raise ValueError(f"config key 'teach.epochs' must be increasing, got {teach.epochs!r}")
    if not any(int(n) > 0 for n in teach.epochs):
        raise ValueError(f"config key 'teach.epochs' needs a number of passes above 0, got {teach.epochs!r}")


def validate(cfg: Config) -> None:
    """:func:`check_settings` as a UsageError; the graph weights become floats."""
    try:
        check_settings(cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg.env.graph_weights = [float(w) for w in cfg.env.graph_weights]


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (atomically); ``--config`` reads it back unchanged."""
    from gpoa.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` if available, else ``mps``, else ``cpu``; an explicit name is checked."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' requested but CUDA is not available; use --set device=cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device 'mps' requested but MPS is not available; use --set device=cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device '{name}'; use auto, cpu, mps, cuda or cuda:N")
    return name
