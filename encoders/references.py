"""The one encode path of Apply PuLID-Flux, Encode identity and `python -m pulid_tools identity`: reference photos ->
fused ID tokens, with curation between finding the faces and encoding them.

    locate every photo (detection, face choice, ArcFace, alignment)
    -> figures and curation (only when curate is not 'off' or a report is asked for)
    -> BiSeNet + EVA-CLIP on the kept faces -> the ID encoder -> fusion (weighted with curate 'weight')
    -> preview rows (annotated with the verdicts when curating) and the curation report.

Curating before BiSeNet/EVA-CLIP/the ID encoder leaves dropped photos out of every batch: the ID encoder is not
batch-invariant, so this is what makes the kept photos' embedding exactly the embedding of those photos alone.
With curate 'off' and no report nothing is measured, and every output is what the encoders gave before curation
existed, bit for bit. The ID encoder comes from pulid_flux (which this package does not import): callers pass a
pulid_flux.curated_fusion.IdTokenMaker."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from .curation.figures import measure_references
from .curation.preview import annotate_previews
from .curation.report import build_report
from .curation.selection import CURATE_MODES, Curation, CurationError, Thresholds, curate
from .faces import FACE_ORDERS
from .pipeline import FaceEncoders, FaceResult, Located, NoFace

# Faces per BiSeNet/EVA-CLIP batch: all reference photos of an ordinary Apply in one pass, while a very large
# batch of references still cannot hold every EVA activation at once.
EMBED_BATCH = 16
_DROPPED_PANEL = 64  # gray level of the EVA-CLIP half of a dropped photo's preview row (it was never encoded)


class IdTokenMakerLike(Protocol):
    def encode(self, id_cond: torch.Tensor, hidden_states: list[torch.Tensor]) -> torch.Tensor: ...

    def fuse(self, tokens: torch.Tensor, fusion: str, weights=None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ReferenceSettings:
    """How reference photos become one identity; hashable, so it can be part of a cache key as it is."""
    fusion: str = "mean"
    face_order: str = "largest"
    face_index: int = 0
    use_gray: bool = True
    curate: str = "off"
    thresholds: Thresholds = Thresholds()
    batch_size: int = EMBED_BATCH

    def __post_init__(self):
        if self.curate not in CURATE_MODES:
            raise ValueError(f"curate: unknown mode {self.curate!r}; use one of {', '.join(CURATE_MODES)}.")
        if self.face_order not in FACE_ORDERS:
            raise ValueError(f"face_order: unknown order {self.face_order!r}; use one of {', '.join(FACE_ORDERS)}.")
        if self.curate == "weight" and self.fusion != "mean":
            raise ValueError(f"curate 'weight' makes a weighted mean of the photos, so it needs fusion 'mean' (got "
                             f"'{self.fusion}'): set fusion to 'mean', or use curate 'drop' with fusion "
                             f"'{self.fusion}'.")


class NoUsableFace(ValueError):
    """No reference photo has a usable face. skipped: photo index -> why; summary: one sentence naming each; the
    message adds the caller's advice (which inputs or flags to change)."""

    def __init__(self, skipped: dict[int, str], advice: str = ""):
        lines = "; ".join(f"image {i + 1}: {why}" for i, why in skipped.items())
        self.summary = f"PuLID-Flux found no usable face in any reference image ({lines})."
        super().__init__(f"{self.summary} {advice}".strip())
        self.skipped = skipped


@dataclass
class ReferenceEncoding:
    """What the reference photos became. Tensors are float32 on the CPU."""
    id_tokens: torch.Tensor  # [1,T,D] fused ID tokens of the photos used
    preview: torch.Tensor  # IMAGE [K,512,1024,3] 0..1: aligned face | what EVA-CLIP saw, one row per photo used
    used: list[int]  # photo indices (batch order) whose tokens made the identity
    skipped: dict[int, str]  # photo index -> why it was not used (no face; left out by curation)
    arcface: torch.Tensor | None = None  # [K,512] raw ArcFace of each photo used
    report: dict | None = None  # the curation report (curation/report.py); None: curate 'off', none asked for
    annotated_preview: torch.Tensor | None = field(default=None, repr=False)  # one row per photo, with verdicts

    @property
    def face_preview(self) -> torch.Tensor:
        """The node's face_preview: each photo with its verdict when curating, else the rows of the photos used."""
        return self.preview if self.annotated_preview is None else self.annotated_preview


@dataclass
class LocatedReferences:
    """The first stage of every photo and what curation made of it."""
    found: list[Located | NoFace]  # one per photo, batch order
    curation: Curation | None  # None when nothing was measured (curate 'off', no report)
    report: dict | None

    @property
    def kept(self) -> list[Located]:
        keep = None if self.curation is None else set(self.curation.kept)
        return [item for item in self.found if isinstance(item, Located) and (keep is None or item.index in keep)]

    @property
    def skipped(self) -> dict[int, str]:
        """Photo index -> why not used: the encoder's reason for no face, curation's for a dropped photo."""
        why = {i: item.reason for i, item in enumerate(self.found) if isinstance(item, NoFace)}
        if self.curation is not None:
            why.update({i: text for i, text in self.curation.dropped.items() if i not in why})
        return dict(sorted(why.items()))


def locate_references(face_encoders: FaceEncoders, images, settings: ReferenceSettings = ReferenceSettings(),
                      report: bool = False, progress: Callable[[int, int], None] | None = None) -> LocatedReferences:
    """Find the face of every photo and curate (figures, verdicts, report) without running BiSeNet, EVA-CLIP or
    the ID encoder. Raises CurationError when curation would leave no photo (drop/weight)."""
    found = face_encoders.locate_all(images, settings.face_order, settings.face_index, settings.batch_size, progress)
    if settings.curate == "off" and not report:
        return LocatedReferences(found, None, None)
    figures = measure_references(found)
    chosen = curate(figures, settings.curate, settings.thresholds)
    return LocatedReferences(found, chosen, build_report(figures, chosen, settings.thresholds))


def report_references(face_encoders: FaceEncoders, images,
                      settings: ReferenceSettings = ReferenceSettings()) -> tuple[dict, CurationError | None]:
    """The curation report alone (`python -m pulid_tools identity --report`: only antelopev2 is needed, for
    detection and ArcFace). When curation leaves no photo, the report still says why for each (all left out),
    with the error beside it."""
    found = face_encoders.locate_all(images, settings.face_order, settings.face_index)
    figures = measure_references(found)
    try:
        return build_report(figures, curate(figures, settings.curate, settings.thresholds), settings.thresholds), None
    except CurationError as error:
        nothing = Curation(settings.curate, (), None, error.why)
        return build_report(figures, nothing, settings.thresholds), error


def encode_references(face_encoders: FaceEncoders, id_tokens: IdTokenMakerLike, images,
                      settings: ReferenceSettings = ReferenceSettings(), report: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> ReferenceEncoding:
    """Reference photos -> ReferenceEncoding (see the module docstring for the stages). report: build the
    curation report even with curate 'off'. progress(done, total) after each photo located and each BiSeNet/EVA-CLIP
    batch (total = photos + batches). Raises NoUsableFace when no photo has a face, CurationError when curation
    leaves none."""
    located = locate_references(face_encoders, images, settings, report, progress)
    kept = located.kept
    if not kept:
        raise NoUsableFace(located.skipped)
    photos = len(located.found)
    faces = face_encoders.embed(kept, settings.use_gray, settings.batch_size, progress=None if progress is None else
                                lambda done, batches: progress(photos + done, photos + batches))
    id_cond = torch.cat([r.id_cond for r in faces])
    hidden = [torch.cat([r.hidden_states[s] for r in faces]) for s in range(len(faces[0].hidden_states))]
    tokens = id_tokens.encode(id_cond, hidden)
    weights = None if located.curation is None else located.curation.weights
    rows = [np.concatenate([r.aligned, r.parsed], axis=1) for r in faces]
    return ReferenceEncoding(
        id_tokens=id_tokens.fuse(tokens.float(), settings.fusion, weights).cpu(),
        preview=torch.stack([torch.from_numpy(row) for row in rows]) / 255.0,
        used=[item.index for item in kept], skipped=located.skipped, arcface=id_cond[:, :512].float().cpu(),
        report=located.report,
        annotated_preview=None if settings.curate == "off" else _annotated(
            located, {item.index: result for item, result in zip(kept, faces)}))


def _annotated(located: LocatedReferences, encoded: dict[int, FaceResult]) -> torch.Tensor:
    """One preview row per photo with its verdict: kept photos as encoded (aligned | EVA-CLIP's view), dropped
    ones as their aligned face beside a dark panel (never encoded), photos without a face as a gray row."""
    rows = []
    for item in located.found:
        if not isinstance(item, Located):
            continue
        result = encoded.get(item.index)
        if result is not None:
            rows.append(np.concatenate([result.aligned, result.parsed], axis=1))
        else:
            aligned = np.ascontiguousarray(item.aligned_bgr[:, :, ::-1])
            rows.append(np.concatenate([aligned, np.full_like(aligned, _DROPPED_PANEL)], axis=1))
    return torch.from_numpy(annotate_previews(np.stack(rows), located.report)).float() / 255.0
