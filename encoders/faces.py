"""InsightFace antelopev2 (detection + ArcFace only): loading without downloads, detection retries, face choice."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .checkpoint import EncoderModelError

log = logging.getLogger(__name__)

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
ANTELOPEV2_FILES = (DETECTOR_FILE, RECOGNIZER_FILE)
ANTELOPEV2_DOWNLOAD_HINT = (
    "Download antelopev2 (at least scrfd_10g_bnkps.onnx and glintr100.onnx) from "
    "https://huggingface.co/MonsterMMORPG/tools/tree/main/antelopev2 or the insightface release "
    "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip, unpacked so that "
    "models/insightface/models/antelopev2/*.onnx exists.")

PROVIDERS = {
    "CPU": ("CPUExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider",),
    "ROCM": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
    "CoreML": ("CoreMLExecutionProvider",),
}
_AUTO_ORDER = ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
               "CoreMLExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider")
DEFAULT_DET_SIZES = (640, 512, 384, 320, 256)
FACE_ORDERS = ("largest", "left-right", "right-left", "top-bottom", "bottom-top", "small-large", "large-small")


_QUIET_LOCK = threading.Lock()
_quiet = {"users": 0, "filter": None}  # threads inside quiet_insightface; the filter entry they share


@contextlib.contextmanager
def quiet_insightface():
    """Silence the FutureWarnings insightface triggers in its own dependencies on every face (scikit-image's
    deprecated `SimilarityTransform.estimate` in face_align) while a face is located or embedded: the process's
    other filters stay as they are, so warnings about anything else still show.

    Thread-safe: warnings.catch_warnings saves and restores the process-wide filter list (before Python 3.14), so two
    threads overlapping in it restored each other's lists and could leave the filter installed for good. Here the
    first thread in installs one filter entry, the last one out removes that entry (by identity) and nothing else."""
    with _QUIET_LOCK:
        if _quiet["users"] == 0:
            before = list(warnings.filters)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"insightface(\.|$)")
            _quiet["filter"] = warnings.filters[0]
            if len(warnings.filters) == len(before):  # the process had this filter already: keep it as it was
                _quiet["filter"] = None
                _set_filters(before)
        _quiet["users"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["users"] -= 1
            if _quiet["users"] == 0:
                entry, _quiet["filter"] = _quiet["filter"], None
                kept = [f for f in warnings.filters if f is not entry]
                if len(kept) != len(warnings.filters):
                    _set_filters(kept)


def _set_filters(filters: list) -> None:
    warnings.filters[:] = filters
    mutated = getattr(warnings, "_filters_mutated", None)  # tells the per-module warning caches (CPython 3.8-3.13)
    if mutated is not None:
        mutated()


class Antelopev2Misplaced(EncoderModelError):
    """antelopev2's files exist, but not where InsightFace loads them from: the message says what to move."""


def onnx_providers(choice: str = "auto", available: list[str] | None = None) -> list[str]:
    """'CPU', 'CUDA', 'ROCM', 'CoreML' or 'auto' -> onnxruntime provider list (CPU kept last as a fallback)."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    if choice == "auto":
        best = next(p for p in _AUTO_ORDER if p in available or p == "CPUExecutionProvider")
    elif choice in PROVIDERS:
        best = next((p for p in PROVIDERS[choice] if p in available), None)
        if best is None:
            log.warning("Face analysis: the %s execution provider is not available in this onnxruntime "
                        "(available: %s); using CPU. Install onnxruntime-gpu (CUDA) or the ROCm/CoreML build "
                        "instead of onnxruntime to use it.", choice, ", ".join(available))
            best = "CPUExecutionProvider"
    else:
        raise ValueError(f"Unknown face analysis provider {choice!r}: use one of auto, {', '.join(PROVIDERS)}.")
    return [best] if best == "CPUExecutionProvider" else [best, "CPUExecutionProvider"]


def _missing(folder: str) -> list[str]:
    return [f for f in ANTELOPEV2_FILES if not os.path.isfile(os.path.join(folder, f))]


def find_antelopev2(root: str) -> str:
    """The folder holding antelopev2's ONNX files under `root` (ROOT/models/antelopev2, or the nested
    ROOT/models/antelopev2/antelopev2 the release zip produces). Raises EncoderModelError saying what to move."""
    root = os.path.abspath(os.fspath(root))
    expected = os.path.join(root, "models", "antelopev2")
    nested = os.path.join(expected, "antelopev2")
    if not _missing(expected):
        return expected
    if os.path.isdir(nested) and not _missing(nested):
        log.info("Face analysis: using the nested antelopev2 folder %s (the zip was unpacked into a folder of the "
                 "same name); moving its files up one level is the standard layout.", nested)
        return nested
    misplaced = [d for d in (os.path.join(root, "antelopev2"), os.path.join(root, "models"), root,
                             os.path.join(root, "antelopev2", "antelopev2")) if os.path.isdir(d) and not _missing(d)]
    if misplaced:
        raise Antelopev2Misplaced(
            f"antelopev2 is in the wrong folder: found {', '.join(ANTELOPEV2_FILES)} in {misplaced[0]}, but "
            f"InsightFace loads them from {expected}.\n  Fix: move the .onnx files into {expected}{os.sep} "
            f"(so that {os.path.join(expected, DETECTOR_FILE)} exists).")
    looked = expected if not os.path.isdir(nested) else f"{expected} (or {nested})"
    found = sorted(os.path.basename(p) for d in (expected, nested) for p in glob.glob(os.path.join(d, "*.onnx")))
    have = f" It holds only: {', '.join(found)}." if found else ""
    raise EncoderModelError(
        f"antelopev2 face models not found: expected {', '.join(_missing(expected))} in {looked}.{have}\n"
        f"  {ANTELOPEV2_DOWNLOAD_HINT}")


def load_face_analysis(root: str, providers: str = "auto", det_size: int = 640):
    """insightface FaceAnalysis for antelopev2 under `root` (the folder holding models/antelopev2), with only
    detection + recognition, prepared at `det_size`. Never downloads: missing files raise EncoderModelError."""
    folder = find_antelopev2(root)
    from insightface.app import FaceAnalysis

    providers = onnx_providers(providers)
    try:
        # An absolute `name` makes insightface use the folder as is (2.x) or via os.path.join (0.7), never download.
        analysis = FaceAnalysis(name=folder, root=os.path.abspath(os.fspath(root)),
                                allowed_modules=["detection", "recognition"], providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf...) share no base class
        raise _damaged_file_error(folder, e) from None
    if "recognition" not in analysis.models:
        raise EncoderModelError(f"{RECOGNIZER_FILE} in {folder} was not recognised as an ArcFace model: the file is "
                                f"damaged or not glintr100.\n  {ANTELOPEV2_DOWNLOAD_HINT}")
    analysis.prepare(ctx_id=0, det_size=(det_size, det_size))
    return analysis


def _damaged_file_error(folder: str, error: Exception) -> EncoderModelError:
    """InsightFace loads every .onnx file of the folder: name the one onnxruntime cannot read (an interrupted
    download), or the detector it did not recognise. Only reached when loading failed, so re-reading is cheap."""
    import onnxruntime

    for path in sorted(glob.glob(os.path.join(folder, "*.onnx"))):
        try:
            onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - see above
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = text.split("failed:", 1)[-1].strip().rstrip(".")  # onnxruntime: "Load model from P failed:why"
            unused = "" if os.path.basename(path) in ANTELOPEV2_FILES else (
                f" PuLID-Flux needs only {' and '.join(ANTELOPEV2_FILES)}: deleting this file also works.")
            return EncoderModelError(
                f"{os.path.basename(path)} in {folder} is damaged: onnxruntime cannot read it ({reason})."
                f"\n  file: {path}\n  Fix: download it again (an interrupted download leaves a truncated file).{unused}"
                f"\n  {ANTELOPEV2_DOWNLOAD_HINT}")
    if isinstance(error, AssertionError):  # insightface asserts it found a detector
        return EncoderModelError(f"{DETECTOR_FILE} in {folder} was not recognised as a face detector: the file is "
                                 f"damaged or not SCRFD.\n  {ANTELOPEV2_DOWNLOAD_HINT}")
    return EncoderModelError(f"InsightFace could not load antelopev2 from {folder}: {type(error).__name__}: {error}"
                             f"\n  {ANTELOPEV2_DOWNLOAD_HINT}")


@dataclass
class DetectedFace:
    """One detection in the coordinates of the image it was found in."""
    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    kps: np.ndarray  # (5, 2) eyes, nose, mouth corners
    det_score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def center(self) -> tuple[float, float]:
        return float(self.bbox[0] + self.bbox[2]) / 2, float(self.bbox[1] + self.bbox[3]) / 2


def detect_faces(analysis, bgr: np.ndarray, det_sizes=DEFAULT_DET_SIZES) -> tuple[list[DetectedFace], int | None]:
    """Faces found at the first detector size (square, px) that finds any; ([], None) if none does."""
    height, width = bgr.shape[:2]
    for size in det_sizes:
        if int(size) * min(height, width) < 2 * max(height, width):
            continue  # insightface would resize the short side to under 2 px (0 px crashes OpenCV)
        with quiet_insightface():
            boxes, kpss = analysis.det_model.detect(bgr, input_size=(int(size), int(size)), max_num=0)
        if boxes is not None and len(boxes) and kpss is not None:
            faces = [DetectedFace(np.asarray(b[:4], np.float32), np.asarray(k, np.float32), float(b[4]))
                     for b, k in zip(boxes, kpss)]
            return faces, int(size)
    return [], None


def order_faces(faces: list[DetectedFace], order: str = "largest") -> list[DetectedFace]:
    """Faces sorted for choosing by index: 'largest'/'large-small' (area, big first), 'small-large',
    'left-right', 'right-left', 'top-bottom', 'bottom-top' (box centres). Ties keep detection order."""
    keys = {
        "largest": lambda f: -f.area, "large-small": lambda f: -f.area, "small-large": lambda f: f.area,
        "left-right": lambda f: f.center[0], "right-left": lambda f: -f.center[0],
        "top-bottom": lambda f: f.center[1], "bottom-top": lambda f: -f.center[1],
    }
    if order not in keys:
        raise ValueError(f"Unknown face order {order!r}: use one of {', '.join(FACE_ORDERS)}.")
    return sorted(faces, key=keys[order])


def choose_face(faces: list[DetectedFace], order: str = "largest",
                index: int = 0) -> tuple[DetectedFace | None, str]:
    """(face, '') or (None, reason) when there is no face at that position in the order."""
    ordered = order_faces(faces, order)
    if not ordered:
        return None, "no face detected"
    if not -len(ordered) <= index < len(ordered):
        return None, (f"face index {index} requested with order '{order}', but only {len(ordered)} face"
                      f"{'s were' if len(ordered) > 1 else ' was'} detected (valid: 0..{len(ordered) - 1})")
    return ordered[index], ""


def arcface_embedding(analysis, bgr: np.ndarray, face: DetectedFace) -> np.ndarray:
    """Raw (not normalized) 512-d ArcFace embedding of `face`, cropped by insightface from its keypoints."""
    from insightface.app.common import Face

    record = Face(bbox=face.bbox, kps=face.kps, det_score=face.det_score)
    with quiet_insightface():
        embedding = analysis.models["recognition"].get(bgr, record)
    return np.asarray(embedding, np.float32).reshape(-1)
