"""The curation report drawn where people look: each reference's preview row (aligned face | what EVA-CLIP saw)
gets its verdict, whether it was used, and its figures, in the style of similarity.annotate (kept green,
dropped red, other problems orange)."""
from __future__ import annotations

import cv2
import numpy as np

from .selection import CONSISTENT

KEPT_RGB = (0, 200, 0)
DROPPED_RGB = (255, 60, 60)
WARN_RGB = (255, 160, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _fitted_scale(lines: list[str], width: int, thick: int, wanted: float) -> float:
    """The font scale (at most `wanted`) at which the longest line fits the width."""
    widest = max(cv2.getTextSize(line, _FONT, 1.0, thick)[0][0] for line in lines)
    return max(0.25, min(wanted, (width - 8) / max(1, widest)))


def caption(ref: dict) -> tuple[str, str]:
    """Two lines for one reference of a report: 'photo 2: consistent, kept' and its figures."""
    used = ("kept" if ref["weight"] is None else f"weight {ref['weight']:.2f}") if ref["kept"] else "dropped"
    first = f"photo {ref['index'] + 1}: {ref['verdict']}, {used}"
    if not ref["face_found"]:
        return first, ref["reason"] or "no face detected"
    parts = []
    if ref["consistency"] is not None:
        parts.append(f"cos {ref['consistency']:.2f}")
    parts += [f"yaw {ref['yaw']:+.0f}" if ref["yaw"] is not None else "",
              f"pitch {ref['pitch']:+.0f}" if ref["pitch"] is not None else ""]
    parts += [f"sharp {ref['sharpness']:.2f}" if ref["sharpness"] is not None else "",
              f"{ref['face_px']:.0f}px" if ref["face_px"] is not None else "",
              f"det {ref['det_score']:.2f}" if ref["det_score"] is not None else ""]
    return first, "  ".join(p for p in parts if p).replace("  pitch", " pitch")


def annotate_reference(rgb: np.ndarray, ref: dict) -> np.ndarray:
    """A copy of one uint8 RGB preview row with a dark band at the top holding the reference's caption."""
    canvas = np.ascontiguousarray(np.array(rgb, dtype=np.uint8, copy=True)[..., :3])
    h, w = canvas.shape[:2]
    thick = max(1, round(max(h, w) / 600))
    # Hershey fonts draw ASCII only (and OpenCV refuses text that is not valid UTF-8): anything else becomes '?'
    lines = [line[:160].encode("ascii", "replace").decode("ascii") for line in caption(ref)]
    scale = _fitted_scale(lines, w, thick, max(0.35, w / 1400))
    line_h = int(cv2.getTextSize("Ag", _FONT, scale, thick)[0][1] * 1.9) + 2
    band = min(h, 2 * line_h + 4)
    canvas[:band] = (canvas[:band].astype(np.uint16) * 3 // 10).astype(np.uint8)  # darken: text stays readable
    colour = (KEPT_RGB if ref["verdict"] == CONSISTENT else WARN_RGB) if ref["kept"] else DROPPED_RGB
    for i, (line, tint) in enumerate(zip(lines, (colour, (235, 235, 235)))):
        cv2.putText(canvas, line, (4, (i + 1) * line_h - 4), _FONT, scale, tint, thick, cv2.LINE_AA)
    if not ref["kept"]:
        cv2.rectangle(canvas, (0, 0), (w - 1, h - 1), DROPPED_RGB, max(2, 2 * thick))
    return canvas


def annotate_previews(rows: np.ndarray, report: dict) -> np.ndarray:
    """The preview rows [F,H,W,3] uint8 of the photos with a face (batch order, as the encoders make them), each
    annotated with its reference from the report; photos without a face get a gray row saying why, in place, so
    the result has one row per photo of the report."""
    rows = np.asarray(rows)
    found = [r for r in report["references"] if r["face_found"]]
    if rows.ndim != 4 or rows.shape[0] != len(found):
        raise ValueError(f"annotate_previews: {rows.shape[0] if rows.ndim == 4 else 'no'} preview rows for "
                         f"{len(found)} photos with a face.")
    shape = rows.shape[1:3] if len(found) else (128, 256)
    out, next_row = [], iter(rows)
    for ref in report["references"]:
        base = next(next_row) if ref["face_found"] else np.full((*shape, 3), 96, np.uint8)
        out.append(annotate_reference(base, ref))
    return np.stack(out) if out else np.zeros((0, *shape, 3), np.uint8)
