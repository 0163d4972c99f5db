"""Verdicts on reference photos by documented thresholds, and curation: which photos make the identity, and with
which weights. Pure functions of the figures (figures.py); fusing ID tokens with the result lives beside the
fusion itself, in pulid_flux/curated_fusion.py."""
from __future__ import annotations

from dataclasses import dataclass

from .figures import FigureSet, ReferenceFigures

CURATE_MODES = ("off", "warn", "drop", "weight")

CONSISTENT = "consistent"
NO_FACE = "no face"
TOO_SMALL = "face too small"
STRONG_TURN = "strong turn"
BLURRED = "blurred"
OTHER_PERSON = "looks like another person"
# A photo's verdict is its first problem in this order. Size, turn and blur come before "another person" because
# they lower ArcFace's similarity themselves: the cause is the more useful thing to name, and a low consistency
# says "another person" only when the photo is otherwise good.
VERDICTS = (NO_FACE, TOO_SMALL, STRONG_TURN, BLURRED, OTHER_PERSON, CONSISTENT)


@dataclass(frozen=True)
class Thresholds:
    """Where a photo stops counting as usable (each is a node input once curation is wired). Defaults and why:

    min_consistency 0.25: ArcFace cosines of two real photos of one person are typically above 0.3 (median about
        0.46 on WithAnyone's MultiID-Bench), of two different people below 0.2 (around 0 on average). A photo's
        consistency is its cosine to the MEAN of the others, which averaging lifts for the same person (with
        pairwise cosine c and k other photos: c / sqrt(c + (1 - c) / k), 0.46 -> 0.54 for k = 2, 0.60 for k = 4)
        and leaves low for another person (0.2 -> at most 0.29 with many photos, typically 0.05 to 0.1). 0.25
        sits between the two. Known weak spot: with three photos, one of them another person (cosine 0.05 to
        both), the stranger drags the other two's consistency down too: to 0.35 when they share c = 0.46, but to
        0.24 when they only reach c = 0.3, so all three are flagged (drop then fails and says why per photo).
    min_face_px 64: ArcFace reads a 112 px crop in which the face's box is about 90 px; a face box under 64 px is
        upscaled more than 1.4x for ArcFace and 8x for the 512 px crop EVA-CLIP and PuLID see: little identity
        detail is left (recognition accuracy drops steeply below this on low-resolution face benchmarks).
    max_yaw 40, max_pitch 30 (degrees, from the five landmarks, about +-10 degrees of error): beyond about 45
        degrees of yaw one eye is hidden and the five-point alignment squashes the face; a strong pitch hides the
        chin or the eyes. The margins leave room for the estimate's error.
    min_sharpness 0.05: on a 115 px face (the astronaut), a Gaussian blur of 1 px (soft but usable) scores 0.11,
        of 2 px (clearly blurred) 0.027; the sharp photo 0.39, the six faces of t1.jpg (an ordinary JPEG) 0.12 to
        0.24. The photo at quarter size (a 29 px face) scores 0.048."""
    min_consistency: float = 0.25
    min_face_px: float = 64.0
    max_yaw: float = 40.0
    max_pitch: float = 30.0
    min_sharpness: float = 0.05

    def __post_init__(self):
        for name in ("min_consistency", "min_face_px", "max_yaw", "max_pitch", "min_sharpness"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"curation threshold {name} must be a number, got {value!r}.")


# For node inputs and command-line flags (declare each once from here): name -> (min, max, step, tooltip);
# the defaults are Thresholds()'s.
THRESHOLD_INPUTS = {
    "min_consistency": (-1.0, 1.0, 0.01, "A photo whose ArcFace cosine to the mean of the other photos is under this "
                        "looks like another person. Photos of one person: typically 0.3 and up; other people: under "
                        "0.2."),
    "min_face_px": (0.0, 4096.0, 1.0, "A face whose detector box (side of a square of the same area, in photo pixels) "
                    "is under this is too small: little identity detail survives the upscaling."),
    "max_yaw": (0.0, 90.0, 1.0, "Left-right turn of the head (degrees, from the five landmarks, about +-10) above "
                "which a photo is a strong turn."),
    "max_pitch": (0.0, 90.0, 1.0, "Up-down tilt of the head (degrees, from the five landmarks, about +-10) above which "
                  "a photo is a strong turn."),
    "min_sharpness": (0.0, 64.0, 0.005, "Fine detail of the aligned face (Laplacian variance over contrast at 128 px) "
                      "under which a photo is blurred: sharp faces score 0.1 to 0.4, a 2 px blur about 0.03."),
}


def _problems(ref: ReferenceFigures, limits: Thresholds) -> list[tuple[str, str]]:
    """(verdict, explanation) for every problem of one photo, in VERDICTS order."""
    if not ref.face_found:
        reason = ref.reason or NO_FACE
        return [(NO_FACE, reason if reason.startswith(NO_FACE) else f"{NO_FACE} ({reason})")]
    found = []
    if ref.face_px is not None and ref.face_px < limits.min_face_px:
        found.append((TOO_SMALL, f"{TOO_SMALL} ({ref.face_px:.0f} px < {limits.min_face_px:g} px)"))
    if ref.yaw is None:
        found.append((STRONG_TURN, f"{STRONG_TURN} (the landmarks do not fit a face seen from the front)"))
    elif abs(ref.yaw) > limits.max_yaw or abs(ref.pitch) > limits.max_pitch:
        found.append((STRONG_TURN, f"{STRONG_TURN} (yaw {ref.yaw:+.0f}, pitch {ref.pitch:+.0f} degrees; limits "
                                   f"{limits.max_yaw:g}, {limits.max_pitch:g})"))
    if ref.sharpness is not None and ref.sharpness < limits.min_sharpness:
        found.append((BLURRED, f"{BLURRED} (sharpness {ref.sharpness:.3f} < {limits.min_sharpness:g})"))
    if ref.consistency is not None and ref.consistency < limits.min_consistency:
        found.append((OTHER_PERSON, f"{OTHER_PERSON} (consistency {ref.consistency:.2f} < "
                                    f"{limits.min_consistency:g})"))
    return found


def problems(ref: ReferenceFigures, limits: Thresholds = Thresholds()) -> list[str]:
    """Every problem of one photo, in VERDICTS order, each with the figure that caused it (empty: usable)."""
    return [text for _, text in _problems(ref, limits)]


def verdict(ref: ReferenceFigures, limits: Thresholds = Thresholds()) -> str:
    """The plain-language verdict: one of VERDICTS (the first problem's, or CONSISTENT)."""
    found = _problems(ref, limits)
    return found[0][0] if found else CONSISTENT


@dataclass(frozen=True)
class Curation:
    """Which photos make the identity. kept: photo indices (batch order); weights: one per kept photo, summing
    to 1 (None: the plain fusion, unweighted); dropped: photo index -> why (photos without a face included)."""
    mode: str
    kept: tuple[int, ...]
    weights: tuple[float, ...] | None
    dropped: dict[int, str]

    def token_rows(self, used) -> list[int]:
        """Rows of the ID-token batch to keep, given `used`: the photo index of each row (photos with a face)."""
        position = {photo: row for row, photo in enumerate(used)}
        missing = [i for i in self.kept if i not in position]
        if missing:
            raise ValueError(f"curation keeps photo(s) {missing} that have no ID tokens (the rows are photos "
                             f"{list(used)}).")
        return [position[i] for i in self.kept]


class CurationError(ValueError):
    """Curation would leave no photo: the message says why for each photo and how to go on."""

    def __init__(self, mode: str, why: dict[int, str]):
        lines = "; ".join(f"photo {i + 1}: {reason}" for i, reason in sorted(why.items()))
        super().__init__(
            f"curate '{mode}' left no reference photo to build the identity from ({lines}). Use photos where one "
            f"face is large, sharp and turned to the camera, all of the same person; or loosen the curation "
            f"thresholds; or set curate to 'warn' to use every photo and see the report.")
        self.mode, self.why = mode, why


def curate(figures: FigureSet, mode: str = "off", limits: Thresholds = Thresholds()) -> Curation:
    """Which photos to keep, and their weights, for one curate mode:

    off, warn: every photo with a face, unweighted (today's result; warn only adds the report).
    drop: the photos without a problem (see `problems`); if none is left, CurationError says why per photo.
    weight: every photo with a face, weighted by max(consistency, 0), normalised to sum 1. A photo whose
        embedding points away from the others' mean (consistency <= 0) says nothing about the person: weight 0,
        dropped. One photo (consistency None) gets weight 1. Size, turn and blur do not change weights (use drop
        for them); if every weight is 0, CurationError.
    No photo with a face at all: kept is empty in every mode, and the caller's no-face handling (NoFaceError,
    on_no_face) applies as it does today; CurationError is only for photos that curation itself left out."""
    if mode not in CURATE_MODES:
        raise ValueError(f"Unknown curate mode {mode!r}: use one of {', '.join(CURATE_MODES)}.")
    refs = figures.references
    no_face = {r.index: problems(r, limits)[0] for r in refs if not r.face_found}
    found = [r for r in refs if r.face_found]
    if not found or mode in ("off", "warn"):
        return Curation(mode, tuple(r.index for r in found), None, no_face)
    if mode == "drop":
        why = {r.index: "; ".join(problems(r, limits)) for r in found if problems(r, limits)}
        kept = tuple(r.index for r in found if r.index not in why)
        if not kept:
            raise CurationError(mode, {**no_face, **why})
        return Curation(mode, kept, None, {**no_face, **why})
    raw = {r.index: 1.0 if r.consistency is None else max(0.0, r.consistency) for r in found}
    why = {r.index: f"consistency {r.consistency:.2f} <= 0: weight 0" for r in found if raw[r.index] <= 0}
    kept = tuple(i for i, w in raw.items() if w > 0)
    if not kept:
        raise CurationError(mode, {**no_face, **why})
    total = sum(raw[i] for i in kept)
    return Curation(mode, kept, tuple(raw[i] / total for i in kept), {**no_face, **why})

