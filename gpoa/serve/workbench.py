"""What one ``gpoa serve`` run holds, without HTTP: uploaded files, references, results and zips.

Every method takes and returns plain values and raises :class:`~gpoa.errors.GPOAError` with a message a
person can act on; the web layer (:mod:`gpoa.serve.app`) only moves bytes and forwards the messages, so
every check of bad input lives here (and in :mod:`gpoa.io` and :mod:`gpoa.predictor`, which this calls).

Files: everything lives in ``folder``, one folder per server run that its maker deletes when the run
ends. Every name in it is generated (a random hex id); the name a user's file had is kept for messages
and for the entries of the zip, never used as a path.

Masks: one :class:`~gpoa.predictor.GPOAPredictor` per combination of the page's settings (policy on/off,
presence on/off) is built at start, as ``GPOAPredictor(cfg, policy, device)`` would be for a config with
``optimize.presence`` on or off; only the first one's models are ever loaded. A reference is a shallow
copy of it with its own ``set_reference`` (models and policy shared, the reference its own), and each
target is ``predict``-ed by a copy of that reference with the chosen combination's ``cfg``,
``optimizer`` and ``presence_threshold``. So every mask comes out of ``GPOAPredictor.predict``,
exactly as a script that built the predictor with those settings would get it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import re
import secrets
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from gpoa.config import Config, with_overrides
from gpoa.errors import InputError, UsageError
from gpoa.io import atomic_write_bytes, encode_png, read_image, read_mask, write_mask, write_prompt_file
from gpoa.metrics import overlap_counts, overlap_scores
from gpoa.predictor import GPOAPredictor
from gpoa.prompts import PromptSet
from gpoa.viz import fit_within, overlay_mask

#: the image formats GPOA reads (gpoa.io), as Pillow names them, and the suffix their file gets here
#: (the suffix matters: a JPEG mask is thresholded at half its range)
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif", "BMP": ".bmp"}
#: the longest side of the pictures the page shows (previews and overlays); masks keep the image's size
DISPLAY_SIZE = 1600
#: what the ids this module hands out look like (a request's id is checked against it before any lookup)
ID_PATTERN = re.compile(r"[0-9a-f]{16}")


class UploadTooLarge(InputError):
    """An upload over ``serve.max_upload_mb``."""


@dataclass(frozen=True)
class Settings:
    """What the page lets a user change; everything else comes from the config."""

    policy: bool
    presence: bool


@dataclass(frozen=True)
class Upload:
    """One uploaded image or mask: ``path`` in the run's folder (a generated name), ``name`` the file name
    the user gave (messages and zip entries only), ``size`` (width, height) in pixels."""

    id: str
    path: Path
    name: str
    size: tuple


@dataclass(frozen=True)
class Result:
    """One target's prediction as the page shows it and the zip holds it: its files (``mask.png``,
    ``initial.json``, ``optimized.json``, ``overlay.png``) are in ``folder``; ``dice`` and ``iou`` are
    None without a truth mask."""

    id: str
    name: str
    size: tuple
    settings: Settings
    present: bool
    confidence: float
    presence_score: Optional[float]
    dice: Optional[float]
    iou: Optional[float]
    initial: PromptSet
    optimized: PromptSet
    folder: Path

    def summary(self) -> dict:
        """The JSON the page reads: the numbers and both prompt sets as (x, y) image pixels and labels
        (1 object, 0 background)."""
        def prompts(prompt_set: PromptSet) -> dict:
            return {"points": np.round(prompt_set.points, 2).tolist(), "labels": prompt_set.labels.tolist()}

        return {"id": self.id, "name": self.name, "width": self.size[0], "height": self.size[1],
                "policy": self.settings.policy, "presence": self.settings.presence, "present": self.present,
                "confidence": round(self.confidence, 4),
                "presence_score": None if self.presence_score is None else round(self.presence_score, 4),
                "dice": None if self.dice is None else round(self.dice, 4),
                "iou": None if self.iou is None else round(self.iou, 4),
                "prompts": {"initial": prompts(self.initial), "optimized": prompts(self.optimized)}}


class Workbench:
    """The uploads, references and results of one server run, kept in ``folder`` (module docstring).

    ``cfg``: the settings (``serve.max_pixels``, ``serve.max_upload_mb`` and the method's); ``policy``: a
    policy file or None; ``device`` as :meth:`GPOAPredictor.from_config` takes it. Bad input raises
    InputError naming the user's file; an unknown id or a setting that cannot be used, UsageError.
    """

    def __init__(self, cfg: Config, policy: Optional[Union[str, Path]], device: str, folder: Path):
        self.folder = Path(folder)
        self.max_pixels = cfg.serve.max_pixels
        self.max_upload_bytes = int(cfg.serve.max_upload_mb * 1_000_000)
        self.default_settings = Settings(policy is not None, cfg.optimize.presence)
        # one predictor per combination of settings; the config's own combination is the one whose
        # models load (shared by every copy); the others only lend their policy and presence settings
        self.predictor = GPOAPredictor.from_config(cfg, policy, device)
        self._templates = {}
        for settings in (Settings(p, q) for p in (True, False) for q in (True, False)):
            if settings.policy and policy is None:
                continue
            if settings == self.default_settings:
                self._templates[settings] = self.predictor
            else:
                variant = with_overrides(cfg, [f"optimize.presence={str(settings.presence).lower()}"])
                self._templates[settings] = GPOAPredictor(variant, policy if settings.policy else None,
                                                          self.predictor.backends.device)
        self.uploads: dict = {}
        self._names: dict = {}  # an upload's path here → the user's name for it (uploads arrive on other threads)
        self.references: dict = {}
        self.results: dict = {}

    # ----- what the page may choose ------------------------------------------------------------------
    def options(self) -> dict:
        """The page's settings: their defaults, and which combinations can run (presence needs a threshold:
        the policy's fitted one or ``optimize.presence_threshold``)."""
        def has_threshold(policy: bool) -> bool:
            template = self._templates.get(Settings(policy, True))
            return template is not None and template.presence_threshold is not None

        return {"policy": self.default_settings.policy, "presence": self.default_settings.presence,
                "policy_available": Settings(True, False) in self._templates,
                "presence_available": {"with_policy": has_threshold(True), "without_policy": has_threshold(False)},
                "max_pixels": self.max_pixels, "max_upload_bytes": self.max_upload_bytes}

    def _settings_predictor(self, reference: GPOAPredictor, settings: Settings) -> GPOAPredictor:
        """A copy of ``reference`` (a predictor with its reference set) that predicts under ``settings``."""
        if settings not in self._templates:
            raise UsageError("the policy setting is on but this server runs without a policy; switch it off "
                             "or start gpoa serve with --policy FILE")
        template = self._templates[settings]
        if settings.presence and template.presence_threshold is None:
            raise UsageError("presence is on but there is no presence threshold " +
                             ("(the policy file has none)" if settings.policy else "without a policy") +
                             "; switch presence off, or start gpoa serve with --set optimize.presence_threshold=T")
        predictor = copy.copy(reference)
        predictor.cfg, predictor.optimizer = template.cfg, template.optimizer
        predictor.presence_threshold = template.presence_threshold
        return predictor

    # ----- uploads -------------------------------------------------------------------------------------
    def check_upload_size(self, size: int, name: str) -> None:
        """InputError when an upload of ``size`` bytes is over ``serve.max_upload_mb``."""
        if size > self.max_upload_bytes:
            raise UploadTooLarge(display_name(name), f"is larger than this server's upload limit of "
                                                 f"{self.max_upload_bytes / 1e6:g} MB (serve.max_upload_mb)",
                             "upload a smaller file (a PNG rather than an uncompressed TIFF), or start gpoa serve "
                             "with --set serve.max_upload_mb=N")

    def upload(self, data: bytes, name: str) -> Upload:
        """Keep an uploaded image or mask file under a generated name: InputError when it is over the
        upload limit, not an image GPOA reads, or over ``serve.max_pixels`` (refused, never downscaled)."""
        name = display_name(name)
        self.check_upload_size(len(data), name)
        try:
            with Image.open(io.BytesIO(data)) as im:
                kind, size = im.format, im.size
        except Image.DecompressionBombError:
            raise InputError(name, f"has more pixels than Pillow opens ({2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                   f"megapixels); this server's limit is {self.max_pixels / 1e6:g} megapixels "
                                   "(serve.max_pixels)", "downscale the image before uploading it") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise InputError(name, "is not an image", "upload a PNG, JPEG, TIFF or BMP file") from None
        if kind not in FORMATS:
            raise InputError(name, f"is a {kind} image; GPOA reads PNG, JPEG, TIFF and BMP", "convert it to PNG")
        width, height = size
        if width * height > self.max_pixels:
            raise InputError(name, f"is {width}x{height} = {width * height / 1e6:.3g} megapixels, more than this "
                                   f"server's limit of {self.max_pixels / 1e6:g} megapixels (serve.max_pixels); "
                                   "images are refused, never downscaled",
                             "downscale it before uploading it, or start gpoa serve with --set serve.max_pixels=N")
        item = Upload(new_id(), self.folder / "uploads" / f"{new_id()}{FORMATS[kind]}", name, (width, height))
        atomic_write_bytes(item.path, data)
        self._names[item.path] = item.name
        self.uploads[item.id] = item
        return item

    def preview(self, upload_id: str) -> bytes:
        """PNG of an uploaded image as GPOA reads it (gray, 16-bit or palette files become RGB), its
        longest side at most DISPLAY_SIZE: what the page shows and paints on."""
        item = self._get(self.uploads, upload_id, "uploaded file")
        with self._named_errors():
            return encode_png(fit_within(read_image(item.path), DISPLAY_SIZE))

    # ----- references and targets ----------------------------------------------------------------------
    def reference(self, image_ids: list, mask_ids: list) -> str:
        """Encode reference pairs (k-shot: every pair is used) for later targets; returns its id."""
        images = [self._get(self.uploads, i, "uploaded file") for i in image_ids]
        masks = [self._get(self.uploads, i, "uploaded file") for i in mask_ids]
        if not images:
            raise UsageError("there is no reference yet: add a reference image, then upload or paint its mask")
        if len(images) != len(masks):
            raise UsageError(f"a reference needs images and a mask for each; got {len(images)} image(s) and "
                             f"{len(masks)} mask(s): upload or paint a mask for every reference image")
        predictor = copy.copy(self.predictor)
        with self._named_errors():
            predictor.set_reference([i.path for i in images], [m.path for m in masks])
        reference_id = new_id()
        self.references[reference_id] = predictor
        return reference_id

    def predict(self, reference_id: str, target_id: str, truth_id: Optional[str] = None,
                settings: Optional[Settings] = None) -> Result:
        """Segment one uploaded target with a reference under ``settings`` (None: the defaults); with a
        truth mask, also its Dice and IoU. Writes the result's files and keeps it for :meth:`archive`."""
        reference = self._get(self.references, reference_id, "reference")
        target = self._get(self.uploads, target_id, "uploaded file")
        truth_file = None if truth_id is None else self._get(self.uploads, truth_id, "uploaded file")
        predictor = self._settings_predictor(reference, settings or self.default_settings)
        with self._named_errors():
            truth = None if truth_file is None else read_mask(truth_file.path, expected_size=target.size)
            prediction = predictor.predict(target.path)
            image = read_image(target.path)
        scores = (None, None) if truth is None else overlap_scores(*overlap_counts(prediction.mask, truth))
        result = Result(new_id(), target.name, target.size, settings or self.default_settings, prediction.present,
                        prediction.confidence, prediction.presence_score, *scores,
                        dataclasses.replace(prediction.prompts.initial, image=target.name),
                        dataclasses.replace(prediction.prompts.optimized, image=target.name),
                        self.folder / "results" / new_id())
        write_mask(result.folder / "mask.png", prediction.mask)
        write_prompt_file(result.folder / "initial.json", result.initial)
        write_prompt_file(result.folder / "optimized.json", result.optimized)
        atomic_write_bytes(result.folder / "overlay.png",
                           encode_png(fit_within(overlay_mask(image, prediction.mask), DISPLAY_SIZE)))
        self.results[result.id] = result
        return result

    def result_file(self, result_id: str, name: str) -> Path:
        """A result's ``overlay.png`` or ``mask.png``."""
        if name not in ("overlay.png", "mask.png"):
            raise UsageError(f"a result has overlay.png and mask.png, not {name!r}")
        return self._get(self.results, result_id, "result").folder / name

    def archive(self, result_ids: list) -> Path:
        """One zip of results: ``masks/NN-<name>.png`` (0/255), ``prompts/NN-<name>.initial.json`` and
        ``.optimized.json`` (gpoa.io.write_prompt_file) and ``results.csv`` (the numbers), NN the order
        given; <name> the target's file name reduced to letters, digits, - and _."""
        results = [self._get(self.results, i, "result") for i in result_ids]
        if not results:
            raise UsageError("nothing to download yet: segment some targets first")
        path = self.folder / "archives" / f"{new_id()}.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["index", "image", "present", "confidence", "presence_score", "dice", "iou", "policy",
                         "presence"])
        digits = len(str(len(results)))
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for index, result in enumerate(results, start=1):
                entry = f"{index:0{digits}d}-{safe_stem(result.name)}"
                archive.write(result.folder / "mask.png", f"masks/{entry}.png")
                archive.write(result.folder / "initial.json", f"prompts/{entry}.initial.json")
                archive.write(result.folder / "optimized.json", f"prompts/{entry}.optimized.json")
                numbers = result.summary()
                writer.writerow([index, result.name] + [numbers[key] for key in
                                                        ("present", "confidence", "presence_score", "dice", "iou",
                                                         "policy", "presence")])
            archive.writestr("results.csv", table.getvalue())
        return path

    def archive_file(self, archive_id: str) -> Optional[Path]:
        """The zip :meth:`archive` wrote as ``archive_id`` (None: there is none)."""
        path = self.folder / "archives" / f"{archive_id}.zip"
        return path if ID_PATTERN.fullmatch(archive_id) and path.is_file() else None

    def warm_up(self) -> None:
        """Load the models now: a model that cannot be loaded stops the server at its start, with the
        message, instead of failing every request."""
        backends = self.predictor.backends
        _ = backends.extractor, backends.segmenter  # each built on first use

    # ----- helpers ---------------------------------------------------------------------------------------
    def _get(self, table: dict, key: str, what: str):
        if not isinstance(key, str) or not ID_PATTERN.fullmatch(key) or key not in table:
            raise UsageError(f"no {what} with id {str(key)[:40]!r} on this server (it keeps them until it stops); "
                             "upload the files again")
        return table[key]

    @contextmanager
    def _named_errors(self):
        """An InputError about an uploaded file raised inside names the user's file, not its path here."""
        try:
            yield
        except InputError as exc:
            if exc.path not in self._names:
                raise
            raise InputError(self._names[exc.path], exc.problem, exc.fix) from None


def new_id() -> str:
    """A random id (ID_PATTERN): the name of every file and folder this module writes."""
    return secrets.token_hex(8)


def display_name(name: str) -> str:
    """The last part of a file name a browser sent, without control characters, at most 100 characters:
    for messages and zip entries only."""
    name = "".join(c for c in str(name) if c.isprintable())
    name = PurePosixPath(name.replace("\\", "/")).name.strip()
    return name[:100] or "upload"


def safe_stem(name: str) -> str:
    """A file name reduced to letters, digits, - and _ (at most 60): a zip entry anyone can unpack."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", PurePosixPath(name).stem).strip("_")[:60] or "image"
