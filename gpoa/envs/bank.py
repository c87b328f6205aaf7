"""The episode bank: the samples of many tasks, each turned into an episode record only when needed.

A record holds what is computed once per sample and shared by every environment that plays it:
the dual-space graph in its start state, the nodes' pixel positions, the segmenter's embedding
of the image and the decoded start mask. Records are built lazily and at most ``capacity`` are
kept (least recently used first out), so memory stays bounded over corpora of many tasks; an
evicted sample is rebuilt from its source when an episode draws it again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from gpoa.config import Config, check_settings
from gpoa.envs.mask_view import RegionView, region_view
from gpoa.graph import DualSpaceGraph, build_graph
from gpoa.matching import l2_normalise, reference_similarity
from gpoa.metrics import dice_batch
from gpoa.prompts import PointPrompts, PromptSet, sample_ideal_prompts
from gpoa.runtime import content_seed
from gpoa.samples import EpisodeSample
from gpoa.segmenters import Segmenter, decode_cells, with_mask_prompt


@dataclass
class SampleRecord:
    """What is computed once per sample and shared by the environments that play it."""

    sample: EpisodeSample
    graph: DualSpaceGraph  # template in the start state; each environment steps its own clone
    node_xy: np.ndarray  # (N, 2) (x, y) original-image pixels of the nodes' patch centres
    node_pixels: tuple  # (row (N,), col (N,)) original-image pixel under each node's patch centre
    view: RegionView  # the predicted region and the other per-image constants of the mask view
    embedding: Any = None
    start_mask: Optional[np.ndarray] = None  # (H, W) bool, the decoded start prompts
    start_dice: Optional[float] = None
    # the environments' mask view of the start state, by (edits, lookahead, shield) setting
    start_observations: dict = field(default_factory=dict)
    # (N, env.domain_inputs - 1) float32 static node columns of a taught policy's domain encoder
    # (gpoa.domain; the environment adds the lookahead one); None without
    domain_columns: Optional[np.ndarray] = None

    def prompts(self, graph: DualSpaceGraph) -> PointPrompts:
        """The active nodes of ``graph`` (a clone of this record's) as point prompts: positives,
        then negatives, in node order, as :meth:`PromptSet.point_prompts` gives them."""
        return self.prompts_of(graph.active, graph.is_positive)

    def prompts_of(self, active: np.ndarray, is_positive: np.ndarray) -> PointPrompts:
        """Point prompts of the nodes selected by ``active`` (N,) bool."""
        return PointPrompts.from_xy(self.node_xy[active & is_positive], self.node_xy[active & ~is_positive])


def check_sample(sample: EpisodeSample, cfg: Config, segmenter: Optional[Segmenter]) -> None:
    """Raise ValueError when ``sample`` lacks what the settings need (image, truth mask, sizes)."""
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


def with_ideal(prompt_set: PromptSet, positive: np.ndarray, negative: np.ndarray) -> PromptSet:
    """The prompt set extended by the ideal prompts, which win where the two disagree on a patch."""
    kept_positive = prompt_set.positive_indices[~np.isin(prompt_set.positive_indices, negative)]
    kept_negative = prompt_set.negative_indices[~np.isin(prompt_set.negative_indices, positive)]
    return PromptSet(prompt_set.image, prompt_set.original_size, prompt_set.grid,
                     np.concatenate([positive, kept_positive]), np.concatenate([negative, kept_negative]),
                     source=prompt_set.source)


def build_record(sample: EpisodeSample, cfg: Config, seed: int) -> SampleRecord:
    """The record of one sample: its graph in the start state ``env.start`` (``ideal`` prompts are
    drawn with a generator seeded by ``seed`` and the truth mask's content, never a name, so a
    record rebuilt after eviction is the same)."""
    prompt_set = sample.prompt_set
    if cfg.env.start == "ideal":
        rng = np.random.default_rng(content_seed(seed, "ideal-start", np.asarray(sample.truth_mask, bool)))
        positive, negative = sample_ideal_prompts(sample.grid, np.asarray(sample.truth_mask, bool),
                                                  cfg.segmentation.ideal_positive,
                                                  cfg.segmentation.ideal_negative, rng)
        prompt_set = with_ideal(prompt_set, positive, negative)
    flat = l2_normalise(np.asarray(sample.target_features).reshape(sample.grid.num_patches, -1))
    _, nearest_foreground, nearest_background = reference_similarity(sample.reference, flat)
    graph = build_graph(sample.grid, sample.target_features, prompt_set, sample.reference, cfg.graph,
                        nearest_similarity=(nearest_foreground, nearest_background))
    if graph.num_nodes > cfg.env.max_nodes:
        raise ValueError(f"sample '{sample.name}' has a graph of {graph.num_nodes} nodes but env.max_nodes is "
                         f"{cfg.env.max_nodes}; raise env.max_nodes (or lower graph.extra_positive/extra_negative "
                         "or matching.max_positive/max_negative)")
    if cfg.env.start == "ideal":
        graph.set_active(graph.nodes_of(positive, negative))
    elif cfg.env.start == "empty":
        graph.set_active(np.zeros(graph.num_nodes, dtype=bool))
    original_size = sample.prompt_set.original_size
    view = region_view(sample, graph, nearest_foreground - nearest_background,
                       cfg.placement)
    return SampleRecord(sample, graph, sample.grid.index_to_original_xy(graph.indices, original_size),
                        sample.grid.patch_centre_pixels(graph.indices, original_size), view,
                        domain_columns=domain_columns(sample, graph, cfg.env.domain_inputs))


def domain_columns(sample: EpisodeSample, graph: DualSpaceGraph, count: int) -> Optional[np.ndarray]:
    """The static domain columns of ``graph``'s nodes (:mod:`gpoa.domain`), (N, count - 1) float32 for
    ``count`` = ``env.domain_inputs`` (the last, the lookahead, is the environment's); None when
    ``count`` is 0. ValueError when the sample lacks its encoder or the encoder has another number
    of columns."""
    if not count:
        return None
    if sample.domain is None:
        raise ValueError(f"sample '{sample.name}' has no domain encoder, but env.domain_inputs is {count}: only a "
                         "taught policy (gpoa teach) observes domain columns")
    if len(sample.domain.names) != count:
        raise ValueError(f"the domain encoder of sample '{sample.name}' gives {len(sample.domain.names)} node "
                         f"columns, but env.domain_inputs is {count}")
    return sample.domain.columns(sample.target_features, graph.indices)


class EpisodeBank:
    """Samples (or lazy sample sources: anything with ``name``, ``task`` and ``load()``) of one or
    many tasks, with their records built on demand (see the module docstring).

    ``segmenter`` (optional) is in the loop for every sample: :meth:`decode` embeds an image once
    per record and decodes many prompt sets per call. ``capacity`` bounds the records kept (default:
    all samples).
    """

    def __init__(self, sources: Sequence, cfg: Config, segmenter: Optional[Segmenter] = None, seed: int = 0,
                 capacity: Optional[int] = None):
        check_settings(cfg)
        if len(sources) == 0:
            raise ValueError("an episode bank needs at least one sample")
        self.sources = list(sources)
        self.cfg, self.segmenter, self.seed = cfg, segmenter, seed
        self.capacity = max(1, capacity or len(self.sources))
        self._records: OrderedDict = OrderedDict()
        self.tasks = sorted({source.task for source in self.sources})

    def __len__(self) -> int:
        return len(self.sources)

    def indices_of(self, task: str) -> list:
        """Sample indices of ``task``."""
        return [i for i, source in enumerate(self.sources) if source.task == task]

    def record(self, index: int) -> SampleRecord:
        """The record of sample ``index``, built (and the oldest evicted) if it is not kept."""
        record = self._records.get(index)
        if record is not None:
            self._records.move_to_end(index)
            return record
        sample = self.sources[index].load()
        check_sample(sample, self.cfg, self.segmenter)
        record = build_record(sample, self.cfg, self.seed)
        self._records[index] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
        return record

    def embedding(self, record: SampleRecord) -> Any:
        """The segmenter's embedding of ``record``'s image, made once, with the sample's mask prompt
        when it has one (:func:`gpoa.segmenters.with_mask_prompt`)."""
        if record.embedding is None:
            sample = record.sample
            embedding = self.segmenter.embed(sample.image)
            if sample.mask_prompt is not None:
                embedding = with_mask_prompt(self.segmenter, embedding, sample.mask_prompt)
            record.embedding = embedding
        return record.embedding

    def decode(self, record: SampleRecord, graphs: Sequence[DualSpaceGraph]) -> tuple:
        """Masks (B, H, W) bool of the active prompts of ``graphs`` (clones of ``record``'s graph), in one
        segmenter call, and their Dice (B,) against the truth mask (None without one)."""
        return self.decode_prompts(record, [record.prompts(graph) for graph in graphs])

    def decode_prompts(self, record: SampleRecord, prompts: Sequence[PointPrompts]) -> tuple:
        """Like :meth:`decode`, for explicit point prompts of ``record``'s image."""
        sample = record.sample
        masks, _ = self.segmenter.decode(self.embedding(record), prompts)
        masks = np.asarray(masks, dtype=bool)
        expected = (len(prompts), *sample.image.shape[:2])
        if masks.shape != expected:
            raise ValueError(f"segmenter returned masks of shape {masks.shape} for sample '{sample.name}', "
                             f"expected {expected} (one mask per prompt set at the image size)")
        dice = None if sample.truth_mask is None else dice_batch(masks, sample.truth_mask)
        return masks, dice

    def decode_cells(self, record: SampleRecord, prompts: Sequence[PointPrompts],
                     base: Optional[PointPrompts] = None) -> np.ndarray:
        """Per-patch shares (B, rows * cols) float32 of the masks of ``prompts`` on ``record``'s image
        (:func:`gpoa.segmenters.decode_cells`; ``base`` lets a segmenter solve one-prompt variants of
        it by rank-one updates)."""
        sample = record.sample
        cells = decode_cells(self.segmenter, self.embedding(record), prompts, (sample.grid.rows, sample.grid.cols),
                             base=base)
        return np.asarray(cells, dtype=np.float32).reshape(len(prompts), -1)

    def start_mask(self, record: SampleRecord) -> tuple:
        """(mask, Dice or None) of the record's start prompts, decoded once."""
        if record.start_mask is None:
            masks, dice = self.decode(record, [record.graph])
            record.start_mask = masks[0]
            record.start_dice = None if dice is None else float(dice[0])
        return record.start_mask, record.start_dice
