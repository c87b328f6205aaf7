"""Teach GPOA one domain: a few labelled pairs of it → one policy file holding what they taught.

    gpoa teach --config C --data DOMAIN --labelled K --out POLICY [--init SHIPPED]
    GPOAPredictor.teach(images, masks, out)                 (gpoa.predictor)
    benchmarks/bench_domains.py ROOT --train K              (the ``taught`` rows)

A user who labelled 10-30 images of one domain gets, in this order, each part chosen by the
leave-one-out Dice of the labelled pairs (a pair used as a target is matched against the OTHER
labelled pairs, never itself):

1. **references** (:func:`choose_references`): the labelled pairs ranked by how well each alone
   prompts the others; of the sets made of the best n (``teach.reference_counts``), the one under
   which the hand-made rule's edit of the initial prompts scores the highest leave-one-out Dice
   (more references can hurt);
2. **the agent** (:func:`fit_agent`): for every labelled pair (its prompts proposed from the chosen
   references without it), the change in Dice of every toggle the policy may take is decoded at
   the states the greedy oracle and the hand-made rule visit, then at those the agent visits
   itself (``teach.rounds``, DAgger); the node-set network learns to score each toggle by that
   change (STOP scores 0), from scratch or from a shipped policy (``init``). Its observation may
   carry node columns that mean something only in this domain (:mod:`gpoa.domain`); with ``init``
   their weights start at zero, so before training it acts exactly as the shipped policy;
3. **the gates** (:func:`choose_gates`): ``optimize.stop_margin`` and ``optimize.min_region_confidence``
   maximising the mean Dice of the labelled pairs under agents that were not trained on them (out
   of fold: ``teach.folds`` agents, each trained on the other folds' pairs), and a presence
   threshold (:func:`choose_presence_threshold`).

Everything goes into one policy file (learner ``teach``; :func:`save_taught`): the network, the
references' patch features and masks at grid resolution (not the images), the domain encoder, the
gates (they replace the config's defaults; a value set in the config or with ``--set`` wins), the
presence threshold and a report (the labelled pairs by name and content digest, the leave-one-out
Dice of each part, ``train_seconds``). :func:`gpoa.inference.load_optimizer` reads it like any
policy; stage 1, stage 3 and the predictor then match against its references.

Arrays in, arrays out: files are read and written by the callers and :func:`save_taught`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from gpoa.agents import network_options
from gpoa.agents.greedy import GreedyPolicy, LookaheadRule, run_greedy
from gpoa.agents.network import NodeSetNetwork, observation_tensors
from gpoa.agents.policy_file import load_policy, save_policy
from gpoa.backends import Backends
from gpoa.config import (
    DEFAULT_MIN_REGION_CONFIDENCE,
    DEFAULT_STOP_MARGIN,
    Config,
    EnvConfig,
    GraphConfig,
    config_to_dict,
)
from gpoa.domain import DomainEncoder, fit_domain_encoder
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv
from gpoa.envs.oracle import MIN_GAIN, toggle_dice
from gpoa.errors import InputError, UsageError
from gpoa.graph import NODE_FEATURES
from gpoa.grid import PatchGrid
from gpoa.inference import decode_masks, propose, reference_features, taught_reference_payload
from gpoa.io import image_size, read_image, read_mask
from gpoa.layout import TaskLayout
from gpoa.metrics import dice
from gpoa.placement import fit_patch_classifier
from gpoa.presence import mask_presence_score
from gpoa.runtime import StageReport, array_digest, stable_seed
from gpoa.samples import EpisodeSample
from gpoa.tasks import load_tasks

#: the learner named in a taught policy file
LEARNER = "teach"
#: the task name of the labelled pairs' samples
TASK = "taught"


@dataclass
class LabelledPair:
    """One labelled image of the domain: ``name`` (for messages and the report), ``image`` (H, W, 3)
    uint8, ``mask`` (H, W) bool (empty: the object is absent; such a pair is never a reference) and
    its patch ``features`` (rows, cols, D) at the feature cache's precision."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    features: np.ndarray

    @cached_property
    def content(self) -> str:
        """A digest of the image: what identifies the pair in the policy file (never its name)."""
        return array_digest(self.image)


@dataclass
class Taught:
    """What :func:`teach` learned: the agent's ``network``, the indices of the labelled pairs chosen
    as ``references``, the domain ``encoder`` (None without domain inputs), the calibrated ``gates``
    (``stop_margin``, ``min_region_confidence``), the ``presence_threshold`` (None: no target is
    called absent), the graph and environment settings of the observation (``run_cfg``) and a
    ``report`` (numbers only: what each part scored)."""

    network: NodeSetNetwork
    references: list
    encoder: Optional[DomainEncoder]
    gates: dict
    presence_threshold: Optional[float]
    run_cfg: Config
    report: dict = field(default_factory=dict)


def labelled_paths(layout: TaskLayout, count: int) -> tuple:
    """(labelled, rest), lists of (image file, mask file or None): a domain folder's first ``count`` + 1
    pairs (stems sorted; the first is its reference) and the others; a dataset folder's reference
    pair(s) and first ``count`` training pairs, and its targets that have a mask. ``count`` 0: every
    pair is labelled."""
    if layout.kind == "domain":
        pairs = layout.reference + [(image, layout.target_masks.get(image.stem)) for image in layout.targets]
        cut = len(pairs) if count == 0 else count + 1
        return pairs[:cut], pairs[cut:]
    layout.require("reference")
    train = layout.train if count == 0 else layout.train[:count]
    return (layout.reference + train,
            [(image, layout.target_masks[image.stem]) for image in layout.targets if image.stem in layout.target_masks])


def read_labelled_pairs(paths: Sequence[tuple], store) -> tuple:
    """(pairs, failures) of ``paths`` [(image file, mask file)]: each read and its features taken from
    ``store`` (:class:`~gpoa.features.store.FeatureStore`: cached by content); a pair that cannot be
    read is left out and listed in ``failures`` [(image name, message)]."""
    pairs, failures = [], []
    for image_path, mask_path in paths:
        try:
            if mask_path is None:
                raise InputError(image_path, "has no mask with the same stem", "label it or leave it out")
            image = read_image(image_path)
            mask = read_mask(mask_path, expected_size=image_size(image))
        except InputError as exc:
            failures.append((Path(image_path).name, str(exc)))
            continue
        pairs.append(LabelledPair(Path(image_path).stem, image, mask, store.features(image_path, image)))
    return pairs, failures


# ----- 1. references --------------------------------------------------------------------------
def reference_of(pairs: Sequence[LabelledPair], grid: PatchGrid, cfg: Config, cache: Optional[dict] = None) -> tuple:
    """(:class:`ReferenceFeatures`, :class:`PatchClassifier`) of ``pairs`` as k-shot references;
    ``cache`` (a dict) keeps them by the pairs, so a set met again is not fitted again."""
    key = tuple(id(p) for p in pairs)
    if cache is not None and key in cache:
        return cache[key]
    reference = reference_features([p.features for p in pairs], [p.mask for p in pairs], grid, cfg)
    fitted = reference, fit_patch_classifier(reference, cfg.placement.regularisation)
    if cache is not None:
        cache[key] = fitted
    return fitted


def usable_references(pairs: Sequence[LabelledPair], grid: PatchGrid, cfg: Config) -> list:
    """Indices of the pairs that can be a reference: the object is there, and some patch of the image
    is foreground and some background (:func:`gpoa.matching.build_reference`)."""
    usable = []
    for i, pair in enumerate(pairs):
        if pair.mask.any():
            try:
                reference_features([pair.features], [pair.mask], grid, cfg)
            except ValueError:
                continue
            usable.append(i)
    return usable


def leave_one_out(target: int, chosen: Sequence[int], ranking: Sequence[int]) -> list:
    """The references of labelled pair ``target``: the ``chosen`` ones without it; when it was the
    only one, the best-ranked other pair (``ranking``: usable pairs, best first)."""
    others = [j for j in chosen if j != target]
    return others or [next(j for j in ranking if j != target)]


def initial_dice(pair: LabelledPair, embedding: Any, references: Sequence[LabelledPair], segmenter, grid: PatchGrid,
                 cfg: Config, cache: Optional[dict] = None) -> float:
    """Dice of the segmenter's mask of stage 1's prompts on ``pair`` proposed from ``references``."""
    reference, classifier = reference_of(references, grid, cfg, cache)
    prompts = propose(reference, classifier, pair.features, pair.image, grid, cfg, pair.name)
    return dice(decode_masks(segmenter, pair.image, [prompts], embedding)[0], pair.mask)


def edited_dice(pair: LabelledPair, embedding: Any, references: Sequence[LabelledPair], segmenter, grid: PatchGrid,
                cfg: Config, cache: Optional[dict] = None) -> float:
    """Dice on ``pair`` after the hand-made rule (:class:`~gpoa.agents.greedy.LookaheadRule`, no gate)
    edits stage 1's prompts proposed from ``references``: what the references leave for editing."""
    reference, classifier = reference_of(references, grid, cfg, cache)
    prompts = propose(reference, classifier, pair.features, pair.image, grid, cfg, pair.name)
    sample = EpisodeSample(pair.name, grid, pair.features, prompts, reference, pair.image, pair.mask, task=TASK,
                           classifier=classifier)
    bank = EpisodeBank([sample], cfg, segmenter, seed=cfg.seed)
    bank.record(0).embedding = embedding
    _, info, _ = run_greedy(LookaheadRule(NODE_FEATURES), PromptEnv(bank, cfg, seed=cfg.seed), options={"sample": 0})
    return float(info["dice"])


def choose_references(pairs: Sequence[LabelledPair], embeddings: Sequence, segmenter, grid: PatchGrid,
                      cfg: Config) -> tuple:
    """(chosen indices, ranking, report): step 1 of the module docstring. The pairs are ranked by the
    mean Dice of the initial prompts they propose alone; each set of the best n is scored by the mean
    Dice after the hand-made rule's edit (:func:`edited_dice`: the region the references predict is
    what editing follows, so a set that proposes worse initial prompts can leave more to gain), both
    over the labelled pairs that hold the object, leave-one-out."""
    usable = usable_references(pairs, grid, cfg)
    if len(usable) < 2:
        raise UsageError(f"teaching needs at least 2 labelled pairs whose mask holds the object (one to match "
                         f"against, one to be matched), got {len(usable)} of {len(pairs)}; label more images")
    present = [i for i, pair in enumerate(pairs) if pair.mask.any()]
    alone, fitted = {}, {}
    for j in tqdm(usable, desc="teach: references alone", unit="pair"):
        alone[j] = float(np.mean([initial_dice(pairs[i], embeddings[i], [pairs[j]], segmenter, grid, cfg, fitted)
                                  for i in present if i != j]))
    ranking = sorted(usable, key=lambda j: (-alone[j], pairs[j].content))
    counts = sorted({min(n, len(ranking)) if n > 0 else len(ranking) for n in cfg.teach.reference_counts})
    scores = {}
    for count in tqdm(counts, desc="teach: reference sets", unit="set"):
        chosen = ranking[:count]
        scores[count] = float(np.mean([
            edited_dice(pairs[i], embeddings[i], [pairs[j] for j in leave_one_out(i, chosen, ranking)], segmenter,
                        grid, cfg, fitted) for i in present]))
    best = max(scores, key=lambda n: (scores[n], n))  # ties: more references
    report = {"alone": {pairs[j].name: alone[j] for j in ranking}, "sets": {str(n): s for n, s in scores.items()},
              "count": best, "edited_loo_dice": scores[best]}
    return ranking[:best], ranking, report


# ----- 2. the agent ------------------------------------------------------------------------------
def starting_network(cfg: Config, extra: int) -> tuple:
    """(network, run config) the agent starts from: the policy file ``teach.init`` widened by ``extra``
    zero-weight node inputs, with the graph and environment settings it was trained with; without one,
    a new network of ``teach.hidden`` units with ``cfg``'s settings and prior (and ``teach.epochs``
    without 0)."""
    init = Path(cfg.teach.init) if cfg.teach.init else None
    if init is None:
        torch.manual_seed(cfg.seed)
        network = NodeSetNetwork(len(NODE_FEATURES) + extra, len(GLOBAL_FEATURES), cfg.teach.hidden,
                                 **network_options(cfg))
        graph, env = cfg.graph, cfg.env
    else:
        policy = load_policy(init)
        if policy.node_features != list(NODE_FEATURES) or policy.global_features != list(GLOBAL_FEATURES):
            raise UsageError(f"--init '{init}' observes other features than this version of GPOA; start from a policy "
                             "that train_GPOA.py of this version wrote (make demo's: checkpoints/demo/best.pt)")
        if not policy.extra.get("segmenter_in_loop"):
            raise UsageError(f"--init '{init}' was trained without the segmenter in the loop (env.reward=graph); "
                             "a taught agent edits with the segmenter: start from a segmentation-reward policy")
        network = policy.network.with_node_inputs(extra)
        graph, env = GraphConfig(**policy.extra["config"]["graph"]), EnvConfig(**policy.extra["config"]["env"])
    env = dataclasses.replace(env, reward="segmentation", start="initial", domain_inputs=extra)
    # no pass at all is a choice only for a network that was trained before
    epochs = [int(n) for n in cfg.teach.epochs if int(n) > 0 or init is not None]
    return network, dataclasses.replace(cfg, graph=graph, env=env, teach=dataclasses.replace(cfg.teach, epochs=epochs))


@dataclass
class States:
    """Labelled states of the agent's environment: observations and, per valid toggle, the change in
    Dice it makes (``target`` (S, M) float32 where ``toggle`` (S, M) bool), and the labelled pair each
    state belongs to (``pair`` (S,))."""

    nodes: list = field(default_factory=list)
    valid: list = field(default_factory=list)
    globals_: list = field(default_factory=list)
    target: list = field(default_factory=list)
    toggle: list = field(default_factory=list)
    pair: list = field(default_factory=list)
    seen: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pair)

    def add(self, obs: dict, env: PromptEnv, index: int) -> tuple:
        """Label ``env``'s current state (once: a state met again is not decoded again) → (toggles, gains)."""
        key = (index, env.graph.active.tobytes(), env.toggled.tobytes())
        if key not in self.seen:
            toggles, _, after = toggle_dice(env, shielded=True)
            gains = after - env.dice
            self.seen[key] = (toggles, gains)
            target = np.zeros(len(obs["valid"]), np.float32)
            toggle = np.zeros(len(obs["valid"]), bool)
            target[toggles], toggle[toggles] = gains, True
            for store, value in ((self.nodes, obs["nodes"]), (self.valid, obs["valid"]), (self.globals_, obs["globals"]),
                                 (self.target, target), (self.toggle, toggle)):
                store.append(np.array(value))
            self.pair.append(index)
        return self.seen[key]

    def arrays(self, pairs: Optional[set] = None) -> tuple:
        """(nodes, valid, globals, target, toggle) stacked over the states of ``pairs`` (all by default)."""
        keep = [k for k, p in enumerate(self.pair) if pairs is None or p in pairs]
        return tuple(np.stack([store[k] for k in keep]) for store in (self.nodes, self.valid, self.globals_,
                                                                         self.target, self.toggle))


def collect(states: States, env: PromptEnv, index: int, policy) -> None:
    """Label every state of one episode on sample ``index``: the greedy oracle's (``policy`` None: the
    toggle that gains most, while one gains) or ``policy``'s (a callable ``(obs, action_mask) → action``)."""
    obs, _ = env.reset(options={"sample": index})
    while True:
        toggles, gains = states.add(obs, env, index)
        if policy is not None:
            action = policy(obs, env.action_masks())
        elif len(gains) and gains.max() > MIN_GAIN:
            action = int(toggles[np.argmax(gains)])
        else:
            action = env.stop_action
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return


def fit_scores(network: NodeSetNetwork, data: tuple, cfg: Config, epochs: Sequence[int]) -> list:
    """Copies of ``network`` trained so that every toggle's score minus STOP's predicts the change in
    Dice the toggle makes, on ``data`` (:meth:`States.arrays`), one after each number of passes in
    ``epochs`` (0: ``network`` as it is). The loss: the Huber loss of that prediction, plus
    ``teach.rank_weight`` times the cross-entropy between the softmax over the state's actions (STOP:
    a change of 0) of the predicted and of the true changes, both divided by ``teach.rank_temperature``
    (what matters is which action is best). Deterministic."""
    network = copy.deepcopy(network)
    nodes, valid, globals_, target, toggle = data
    teach = cfg.teach
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=teach.learning_rate, weight_decay=teach.weight_decay)
    snapshots = {0: copy.deepcopy(network).eval()} if 0 in epochs else {}
    network.train()
    for epoch in range(1, max(epochs) + 1):
        order = torch.randperm(len(nodes), generator=generator).numpy()
        for start in range(0, len(order), teach.batch_size):
            batch = order[start:start + teach.batch_size]
            inputs, width = observation_tensors(nodes[batch], valid[batch].astype(bool), globals_[batch], "cpu")
            scores = network(*inputs)
            gain = scores[:, :width] - scores[:, width:]  # (B, W): each toggle's score minus STOP's
            chosen = torch.as_tensor(toggle[batch, :width])
            truth = torch.as_tensor(target[batch, :width])
            if not bool(chosen.any()):
                continue
            loss = functional.smooth_l1_loss(gain[chosen], truth[chosen], beta=HUBER_BETA)
            if teach.rank_weight:
                stop = torch.zeros(len(batch), 1)
                valid_actions = torch.cat([chosen, torch.ones(len(batch), 1, dtype=torch.bool)], dim=1)
                predicted = torch.cat([gain, stop], dim=1).masked_fill(~valid_actions, -torch.inf)
                wanted = torch.cat([truth, stop], dim=1).masked_fill(~valid_actions, -torch.inf)
                temperature = teach.rank_temperature
                log_p = torch.log_softmax(predicted / temperature, dim=1).masked_fill(~valid_actions, 0.0)
                loss = loss - teach.rank_weight * temperature * (torch.softmax(wanted / temperature, dim=1)
                                                                 * log_p).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch in epochs:
            snapshots[epoch] = copy.deepcopy(network).eval()
    return [snapshots[epoch] for epoch in epochs]


#: where the loss turns from quadratic to linear, in Dice
HUBER_BETA = 0.05


def domain_encoder(pairs: Sequence[LabelledPair], grid: PatchGrid, cfg: Config) -> DomainEncoder:
    """The domain encoder (:mod:`gpoa.domain`) of ``pairs``: its classifier fitted on their patches and
    truth, ``teach.feature_axes`` principal axes of their features."""
    try:
        patches = reference_features([p.features for p in pairs], [p.mask for p in pairs], grid, cfg)
    except ValueError as exc:
        raise UsageError(f"the labelled pairs cannot train a patch classifier: {exc}") from None
    return fit_domain_encoder(patches, cfg.teach.feature_axes, cfg.placement.regularisation)


def labelled_samples(pairs: Sequence[LabelledPair], chosen: Sequence[int], ranking: Sequence[int], grid: PatchGrid,
                     cfg: Config, domain_inputs: bool) -> list:
    """One sample per labelled pair, its prompts proposed from its leave-one-out references
    (:func:`leave_one_out`), with its truth, the references' patch classifier and, with
    ``domain_inputs``, the domain encoder of the OTHER pairs (:func:`domain_encoder`)."""
    samples, fitted = [], {}
    for i, pair in enumerate(tqdm(pairs, desc="teach: leave-one-out samples", unit="pair")):
        reference, classifier = reference_of([pairs[j] for j in leave_one_out(i, chosen, ranking)], grid, cfg, fitted)
        prompts = propose(reference, classifier, pair.features, pair.image, grid, cfg, pair.name)
        encoder = domain_encoder([p for j, p in enumerate(pairs) if j != i], grid, cfg) if domain_inputs else None
        samples.append(EpisodeSample(pair.name, grid, pair.features, prompts, reference, pair.image, pair.mask,
                                     task=TASK, classifier=classifier, domain=encoder))
    return samples


def collect_states(network: NodeSetNetwork, env: PromptEnv, cfg: Config) -> States:
    """The labelled states of step 2 (module docstring) over every sample of ``env``: the oracle's and
    the rule's, then ``teach.rounds`` times those of the agent fitted so far (``teach.epochs[-1]``
    passes)."""
    states = States()
    rule = LookaheadRule(NODE_FEATURES)
    for index in tqdm(range(env.num_samples), desc="teach: oracle and rule states", unit="pair"):
        collect(states, env, index, None)
        collect(states, env, index, rule)
    for round_ in range(cfg.teach.rounds):
        policy = GreedyPolicy(fit_scores(network, states.arrays(), cfg, [cfg.teach.epochs[-1]])[0])
        for index in tqdm(range(env.num_samples), desc=f"teach: the agent's states ({round_ + 1})", unit="pair"):
            collect(states, env, index, policy)
    return states


# ----- 3. the gates --------------------------------------------------------------------------------
def folds_of(pairs: Sequence[LabelledPair], count: int, seed: int) -> list:
    """Fold (0 to ``count`` - 1) of every pair: a shuffle drawn from the run seed and the pairs' content."""
    order = sorted(range(len(pairs)), key=lambda i: (stable_seed(seed, "teach-fold", pairs[i].content), i))
    fold = np.zeros(len(pairs), dtype=np.int64)
    fold[order] = np.arange(len(pairs)) % max(1, min(count, len(pairs)))
    return fold.tolist()


def out_of_fold(network: NodeSetNetwork, states: States, env: PromptEnv, folds: Sequence[int], cfg: Config) -> dict:
    """For every labelled pair, the Dice of agents trained on the other folds' pairs for each number of
    passes of ``teach.epochs`` under each stop margin of ``teach.stop_margins`` (``final`` (P, epochs,
    margins)), the start Dice (``start`` (P,)) and the region confidence (``confidence`` (P,)), the
    observation's."""
    epochs, margins = list(cfg.teach.epochs), list(cfg.teach.stop_margins)
    final = np.zeros((env.num_samples, len(epochs), len(margins)))
    start, confidence = np.zeros(env.num_samples), np.zeros(env.num_samples)
    where = GLOBAL_FEATURES.index("region_confidence")
    for fold in tqdm(sorted(set(folds)), desc="teach: out-of-fold agents and gates", unit="fold"):
        held = [i for i, f in enumerate(folds) if f == fold]
        others = {i for i, f in enumerate(folds) if f != fold}
        agents = (fit_scores(network, states.arrays(others), cfg, epochs) if others & set(states.pair)
                  else [network] * len(epochs))
        for e, agent in enumerate(agents):
            for m, margin in enumerate(margins):
                policy = GreedyPolicy(agent, stop_margin=margin)
                for i in held:
                    _, info, _ = run_greedy(policy, env, options={"sample": i})
                    final[i, e, m] = info["dice"]
        for i in held:
            obs, info = env.reset(options={"sample": i})
            start[i], confidence[i] = info["dice"], obs["globals"][where]
    return {"final": final, "start": start, "confidence": confidence}


def choose_gates(predictions: dict, cfg: Config) -> tuple:
    """(passes, gates, mean Dice): the number of passes (``teach.epochs``), stop margin and minimum
    region confidence (``teach.stop_margins`` x ``teach.min_region_confidences``) under which the
    out-of-fold predictions score the highest mean Dice (a pair below the confidence keeps its start
    Dice); ties go to fewer passes and the built-in defaults' side (the margin nearest 0, the
    confidence nearest 0.5)."""
    best, best_key = None, None
    for e, epochs in enumerate(cfg.teach.epochs):
        for m, margin in enumerate(cfg.teach.stop_margins):
            for threshold in cfg.teach.min_region_confidences:
                gated = predictions["confidence"] >= threshold
                value = float(np.mean(np.where(gated, predictions["final"][:, e, m], predictions["start"])))
                key = (round(value, 9), -epochs, -abs(margin - DEFAULT_STOP_MARGIN),
                       -abs(threshold - DEFAULT_MIN_REGION_CONFIDENCE))
                if best_key is None or key > best_key:
                    gates = {"stop_margin": float(margin), "min_region_confidence": float(threshold)}
                    best, best_key = (int(epochs), gates, value), key
    return best


def choose_presence_threshold(env: PromptEnv, predictions: dict, epochs: int, gates: dict, cfg: Config,
                              prior: Optional[float]) -> tuple:
    """(threshold or None, report): the presence threshold (:mod:`gpoa.presence`) that maximises the
    labelled pairs' mean Dice when a pair called absent gets an empty mask (Dice 1 where the object
    is absent, 0 where it is there) and the others their out-of-fold Dice under ``gates``. Ties go to
    the threshold nearest ``prior`` (the starting policy's), or, without one, to calling no labelled
    pair absent: None when no pair lacks the object and there is no prior. ``epochs`` and ``gates``:
    those :func:`choose_gates` chose."""
    scores, truth_empty = [], []
    for index in range(env.num_samples):
        record = env.bank.record(index)
        mask, _ = env.bank.start_mask(record)
        sample = record.sample
        scores.append(mask_presence_score(mask, sample.reference, sample.target_features))
        truth_empty.append(not sample.truth_mask.any())
    scores, truth_empty = np.asarray(scores), np.asarray(truth_empty)
    report = {"scores": scores.tolist(), "absent_pairs": int(truth_empty.sum())}
    if not truth_empty.any() and prior is None:
        return None, report
    margin = list(cfg.teach.stop_margins).index(gates["stop_margin"])
    gated = predictions["confidence"] >= gates["min_region_confidence"]
    kept = np.where(gated, predictions["final"][:, list(cfg.teach.epochs).index(epochs), margin],
                    predictions["start"])
    ordered = np.unique(scores)
    candidates = np.concatenate([[ordered[0] - 1e-3], (ordered[:-1] + ordered[1:]) / 2, [ordered[-1] + 1e-3]])
    if prior is not None:
        candidates = np.append(candidates, prior)

    def value(threshold: float) -> float:
        absent = scores < threshold
        return float(np.mean(np.where(absent, truth_empty.astype(float), kept)))

    anchor = prior if prior is not None else candidates[0]
    threshold = max(candidates, key=lambda t: (round(value(t), 9), -abs(t - anchor)))
    report["dice"] = value(threshold)
    return float(threshold), report


# ----- the whole lesson --------------------------------------------------------------------------------
def teach(pairs: Sequence[LabelledPair], cfg: Config, backends) -> Taught:
    """Steps 1-3 of the module docstring on ``pairs`` with ``backends``' segmenter (``teach.init``: a
    policy file to start the agent from). Raises UsageError when the pairs cannot teach anything.
    The network trains on the CPU with ``train.cpu_threads`` threads (0: torch's default)."""
    threads = torch.get_num_threads()
    if cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    try:
        return _teach(pairs, cfg, backends)
    finally:
        torch.set_num_threads(threads)


def _teach(pairs: Sequence[LabelledPair], cfg: Config, backends) -> Taught:
    started = time.perf_counter()
    grid, segmenter = backends.grid, backends.segmenter
    embeddings = [segmenter.embed(pair.image) for pair in tqdm(pairs, desc="teach: embed", unit="pair")]
    chosen, ranking, reference_report = choose_references(pairs, embeddings, segmenter, grid, cfg)
    encoder = domain_encoder(pairs, grid, cfg) if cfg.teach.domain_inputs else None
    network, run_cfg = starting_network(cfg, len(encoder.names) if encoder is not None else 0)
    samples = labelled_samples(pairs, chosen, ranking, grid, run_cfg, cfg.teach.domain_inputs)
    try:
        bank = EpisodeBank(samples, run_cfg, segmenter, seed=cfg.seed)
        for index, embedding in enumerate(embeddings):
            bank.record(index).embedding = embedding
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    env = PromptEnv(bank, run_cfg, seed=cfg.seed)
    states = collect_states(network, env, run_cfg)
    predictions = out_of_fold(network, states, env, folds_of(pairs, cfg.teach.folds, cfg.seed), run_cfg)
    epochs, gates, gated_dice = choose_gates(predictions, run_cfg)
    agent = fit_scores(network, states.arrays(), run_cfg, [epochs])[0]
    prior = load_policy(Path(cfg.teach.init)).extra.get("presence_threshold") if cfg.teach.init else None
    presence, presence_report = choose_presence_threshold(env, predictions, epochs, gates, run_cfg, prior)
    report = {"references": reference_report, "states": len(states), "epochs": epochs,
              "loo_dice": {"start": float(predictions["start"].mean()), "taught": gated_dice},
              "presence": presence_report, "train_seconds": time.perf_counter() - started}
    return Taught(agent, chosen, encoder, gates, presence, run_cfg, report)


def save_taught(path: Path, taught: Taught, pairs: Sequence[LabelledPair], cfg: Config, backends) -> None:
    """Write ``taught`` as one policy file (atomically; the module docstring says what it holds)."""
    references = [pairs[j] for j in taught.references]
    extra = {"config": config_to_dict(taught.run_cfg), "grid": backends.grid.to_dict(), "reward": "segmentation",
             "segmenter_in_loop": True, "feature_cache_key": backends.feature_key, "tasks": [TASK],
             "references": taught_reference_payload([p.features for p in references], [p.mask for p in references],
                                                    backends.grid),
             "gates": taught.gates,
             "teach": {**taught.report, "init": cfg.teach.init,
                       "labelled": [{"name": p.name, "content": p.content} for p in pairs],
                       "reference_pairs": [{"name": p.name, "content": p.content} for p in references]}}
    if taught.encoder is not None:
        extra["domain"] = taught.encoder.to_dict()
    if taught.presence_threshold is not None:
        extra["presence_threshold"] = taught.presence_threshold
    names = tuple(NODE_FEATURES) + (taught.encoder.names if taught.encoder is not None else ())
    save_policy(path, taught.network, learner=LEARNER, settings=dataclasses.asdict(cfg.teach), node_features=names,
                global_features=GLOBAL_FEATURES, extra=extra)


def summary_line(taught: Taught) -> str:
    """One line: what teaching chose and scored (leave-one-out Dice of the labelled pairs)."""
    report, gates = taught.report, taught.gates
    presence = "none" if taught.presence_threshold is None else f"{taught.presence_threshold:+.3f}"
    return (f"references={len(taught.references)} rule_loo_dice={report['references']['edited_loo_dice']:.3f} "
            f"start_loo_dice={report['loo_dice']['start']:.3f} taught_loo_dice={report['loo_dice']['taught']:.3f} "
            f"epochs={report['epochs']} stop_margin={gates['stop_margin']:g} "
            f"min_region_confidence={gates['min_region_confidence']:g} presence_threshold={presence} "
            f"states={report['states']} train_seconds={report['train_seconds']:.0f}")


def teach_domain(cfg: Config, device: str = "cpu") -> StageReport:
    """``gpoa teach``: the labelled pairs (``teach.labelled``, :func:`labelled_paths`) of the one task
    of ``cfg.data`` → the policy file ``teach.out``. A pair that cannot be read is reported and left out."""
    if not cfg.teach.out:
        raise UsageError("gpoa teach needs --out POLICY, the policy file to write")
    out = Path(cfg.teach.out)
    if out.exists() and not cfg.overwrite:
        raise UsageError(f"'{out}' exists; pass --overwrite to replace it or choose another --out")
    backends = Backends(cfg, device)
    tasks = load_tasks(cfg, backends)
    if len(tasks) != 1:
        raise UsageError(f"gpoa teach learns one domain at a time; give one --data folder (a domain folder or a "
                         f"dataset folder), got {len(tasks)} tasks: {', '.join(t.name for t in tasks)}")
    task = tasks[0]
    labelled, _ = labelled_paths(task.layout, cfg.teach.labelled)
    wanted = cfg.teach.labelled + len(task.layout.reference)
    if cfg.teach.labelled and len(labelled) < wanted:
        raise UsageError(f"'{task.layout.source}' has {len(labelled)} labelled pairs, fewer than --labelled "
                         f"{cfg.teach.labelled} asks (with its reference: {wanted}); lower --labelled or label more")
    report = StageReport("teach")
    pairs, failures = read_labelled_pairs(labelled, task.store)
    for name, message in failures:
        report.fail(f"{task.name}/{name}", message)
    print(f"[teach] {task.name}: {len(pairs)} labelled pairs" + (f", from {cfg.teach.init}" if cfg.teach.init else ""))
    taught = teach(pairs, cfg, backends)
    save_taught(out, taught, pairs, cfg, backends)
    print(f"[teach] {summary_line(taught)}; policy: {out}")
    report.done.extend(f"{task.name}/{pair.name}" for pair in pairs)
    return report
