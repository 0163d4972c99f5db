"""Draw the pictures of the node help pages into web/docs/images/: for each node a diagram of where it sits in a
graph (SVG, English and Chinese titles from locales/*/nodeDefs.json), and the previews Apply PuLID-Flux, Encode
identity, curation and Face similarity draw, made with the pack's own drawing code from the test photos
(scikit-image's astronaut, insightface's t1.jpg) and the test models of tests/support (random weights: the faces
are found where tests/support places them, the scores and the EVA-CLIP half mean nothing). Each preview says so.

  python tools/doc_pictures.py          # from the repository, with the test requirements installed

No ComfyUI needed. The output is deterministic; commit what changed."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from html import escape

import numpy as np

sys.dont_write_bytecode = True
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "web", "docs", "images")
TEST_MODELS_NOTE = "made with the pack's test models (random weights): scores and the right half mean nothing"

# Diagrams: columns of boxes, left to right. A box is (key, column, row); a key is a pack node's class name (its
# title comes from the locale), or one of CORE's ComfyUI nodes / files. Edges: (from, to, label).
CORE = {
    "unet": "Load Diffusion Model", "image": "Load Image", "ksampler": "KSampler", "preview": "Preview Image",
    "save_image": "Save Image", "decode": "VAE Decode", "encode": "VAE Encode", "inpaint": "InpaintModelConditioning",
    "id_file": "identities/NAME.safetensors", "card_out": "output/NAME.png (card)", "card_in": "input/NAME.png (card)",
}
CORE_ZH = {"card_out": "output/NAME.png（身份卡）", "card_in": "input/NAME.png（身份卡）"}
FILES = ("id_file", "card_out", "card_in")
# Titles of issue 24's face nodes until the English locale is regenerated with them (their spec's display names).
PENDING_TITLES = {"PulidFluxFaceMask": "Face mask (PuLID-Flux)", "PulidFluxCropFace": "Crop face (PuLID-Flux)",
                  "PulidFluxPasteFace": "Paste face (PuLID-Flux)"}
LOADERS = [("PulidFluxModelLoader", 0, 0), ("PulidFluxEvaClipLoader", 0, 1), ("PulidFluxInsightFaceLoader", 0, 2),
           ("image", 0, 3)]
LOADER_EDGES = [("PulidFluxModelLoader", "pulid_flux"), ("PulidFluxEvaClipLoader", "eva_clip"),
                ("PulidFluxInsightFaceLoader", "face_analysis"), ("image", "image")]


def _fan_in(target):
    return [(src, target, label) for src, label in LOADER_EDGES]


DIAGRAMS = {
    "PulidFluxModelLoader": ([("PulidFluxModelLoader", 0, 1), ("ApplyPulidFlux", 1, 0),
                              ("PulidFluxEncodeIdentity", 1, 1), ("PulidFluxApplyIdentity", 1, 2)],
                             [("PulidFluxModelLoader", "ApplyPulidFlux", "pulid_flux"),
                              ("PulidFluxModelLoader", "PulidFluxEncodeIdentity", "pulid_flux"),
                              ("PulidFluxModelLoader", "PulidFluxApplyIdentity", "pulid_flux")]),
    "PulidFluxInsightFaceLoader": ([("PulidFluxInsightFaceLoader", 0, 1), ("ApplyPulidFlux", 1, 0),
                                    ("PulidFluxEncodeIdentity", 1, 1), ("PulidFluxFaceSimilarity", 1, 2)],
                                   [("PulidFluxInsightFaceLoader", n, "face_analysis")
                                    for n in ("ApplyPulidFlux", "PulidFluxEncodeIdentity", "PulidFluxFaceSimilarity")]),
    "PulidFluxEvaClipLoader": ([("PulidFluxEvaClipLoader", 0, 0.5), ("ApplyPulidFlux", 1, 0),
                                ("PulidFluxEncodeIdentity", 1, 1)],
                               [("PulidFluxEvaClipLoader", "ApplyPulidFlux", "eva_clip"),
                                ("PulidFluxEvaClipLoader", "PulidFluxEncodeIdentity", "eva_clip")]),
    "ApplyPulidFlux": ([("unet", 0, -1)] + LOADERS + [("ApplyPulidFlux", 1, 1), ("ksampler", 2, 0.5),
                                                      ("preview", 2, 2)],
                       [("unet", "ApplyPulidFlux", "model")] + _fan_in("ApplyPulidFlux") +
                       [("ApplyPulidFlux", "ksampler", "MODEL"), ("ApplyPulidFlux", "preview", "face_preview")]),
    "PulidFluxEncodeIdentity": (LOADERS + [("PulidFluxEncodeIdentity", 1, 1.5), ("PulidFluxSaveIdentity", 2, 0.5),
                                           ("PulidFluxApplyIdentity", 2, 1.5), ("preview", 2, 2.5)],
                                _fan_in("PulidFluxEncodeIdentity") +
                                [("PulidFluxEncodeIdentity", "PulidFluxSaveIdentity", "identity"),
                                 ("PulidFluxEncodeIdentity", "PulidFluxApplyIdentity", "identity"),
                                 ("PulidFluxEncodeIdentity", "preview", "face_preview")]),
    "PulidFluxApplyIdentity": ([("unet", 0, 0), ("PulidFluxModelLoader", 0, 1), ("PulidFluxLoadIdentity", 0, 2),
                                ("PulidFluxApplyIdentity", 1, 1), ("ksampler", 2, 1)],
                               [("unet", "PulidFluxApplyIdentity", "model"),
                                ("PulidFluxModelLoader", "PulidFluxApplyIdentity", "pulid_flux"),
                                ("PulidFluxLoadIdentity", "PulidFluxApplyIdentity", "identity"),
                                ("PulidFluxApplyIdentity", "ksampler", "MODEL")]),
    "PulidFluxSaveIdentity": ([("PulidFluxEncodeIdentity", 0, 0), ("PulidFluxBlendIdentities", 0, 1),
                               ("PulidFluxSaveIdentity", 1, 0.5), ("id_file", 2, 0), ("card_out", 2, 1)],
                              [("PulidFluxEncodeIdentity", "PulidFluxSaveIdentity", "identity"),
                               ("PulidFluxBlendIdentities", "PulidFluxSaveIdentity", "identity"),
                               ("PulidFluxSaveIdentity", "id_file", ""),
                               ("PulidFluxSaveIdentity", "card_out", "card")]),
    "PulidFluxLoadIdentity": ([("id_file", 0, 0.5), ("PulidFluxLoadIdentity", 1, 0.5), ("PulidFluxApplyIdentity", 2, 0),
                               ("preview", 2, 1)],
                              [("id_file", "PulidFluxLoadIdentity", "identity_file"),
                               ("PulidFluxLoadIdentity", "PulidFluxApplyIdentity", "identity"),
                               ("PulidFluxLoadIdentity", "preview", "preview")]),
    "PulidFluxLoadIdentityCard": ([("card_in", 0, 0.5), ("PulidFluxLoadIdentityCard", 1, 0.5),
                                   ("PulidFluxApplyIdentity", 2, 0), ("preview", 2, 1)],
                                  [("card_in", "PulidFluxLoadIdentityCard", "image"),
                                   ("PulidFluxLoadIdentityCard", "PulidFluxApplyIdentity", "identity"),
                                   ("PulidFluxLoadIdentityCard", "preview", "preview")]),
    "PulidFluxBlendIdentities": ([("PulidFluxLoadIdentity", 0, 0), ("PulidFluxLoadIdentityCard", 0, 1),
                                  ("PulidFluxBlendIdentities", 1, 0.5), ("PulidFluxApplyIdentity", 2, 0),
                                  ("PulidFluxSaveIdentity", 2, 1)],
                                 [("PulidFluxLoadIdentity", "PulidFluxBlendIdentities", "identity_a"),
                                  ("PulidFluxLoadIdentityCard", "PulidFluxBlendIdentities", "identity_b"),
                                  ("PulidFluxBlendIdentities", "PulidFluxApplyIdentity", "identity"),
                                  ("PulidFluxBlendIdentities", "PulidFluxSaveIdentity", "identity")]),
    "PulidFluxFaceSimilarity": ([("decode", 0, 0), ("PulidFluxLoadIdentity", 0, 1),
                                 ("PulidFluxInsightFaceLoader", 0, 2), ("PulidFluxFaceSimilarity", 1, 1),
                                 ("save_image", 2, 0.5), ("preview", 2, 1.5)],
                                [("decode", "PulidFluxFaceSimilarity", "images"),
                                 ("PulidFluxLoadIdentity", "PulidFluxFaceSimilarity", "identity"),
                                 ("PulidFluxInsightFaceLoader", "PulidFluxFaceSimilarity", "face_analysis"),
                                 ("PulidFluxFaceSimilarity", "save_image", "best_image"),
                                 ("PulidFluxFaceSimilarity", "preview", "annotated")]),
    "PulidFluxFaceMask": ([("image", 0, 0), ("PulidFluxInsightFaceLoader", 0, 1), ("PulidFluxFaceMask", 1, 0.5),
                           ("inpaint", 2, 0.5)],
                          [("image", "PulidFluxFaceMask", "image"),
                           ("PulidFluxInsightFaceLoader", "PulidFluxFaceMask", "face_analysis"),
                           ("PulidFluxFaceMask", "inpaint", "mask")]),
    "PulidFluxCropFace": ([("image", 0, 0), ("PulidFluxInsightFaceLoader", 0, 1), ("PulidFluxCropFace", 1, 0.5),
                          ("inpaint", 2, -0.5), ("PulidFluxPasteFace", 2, 1.5)],
                         [("image", "PulidFluxCropFace", "image"),
                          ("PulidFluxInsightFaceLoader", "PulidFluxCropFace", "face_analysis"),
                          ("PulidFluxCropFace", "inpaint", "crops, crop_masks"),
                          ("PulidFluxCropFace", "PulidFluxPasteFace", "crop_info")]),
    "PulidFluxPasteFace": ([("image", 0, 0), ("PulidFluxCropFace", 0, 1), ("decode", 0, 2),  # decode: the sampled crops
                           ("PulidFluxPasteFace", 1, 1), ("save_image", 2, 1)],
                          [("image", "PulidFluxPasteFace", "image"),
                           ("PulidFluxCropFace", "PulidFluxPasteFace", "crop_info"),
                           ("decode", "PulidFluxPasteFace", "crops"),
                           ("PulidFluxPasteFace", "save_image", "image")]),
}

FONT = "font-family='Segoe UI, Helvetica, Arial, Noto Sans CJK SC, Microsoft YaHei, sans-serif'"
COLOURS = {"this": ("#7c5cff", "#ffffff"), "pack": ("#33415c", "#e8ecf4"), "core": ("#3a3a3a", "#e0e0e0"),
           "file": ("#262626", "#c8c8c8")}


def _text_width(text: str, size: float) -> float:
    return sum(size * (1.0 if ord(ch) > 0x2E7F else 0.56) for ch in text)


def _short(title: str) -> str:
    """A node title without the pack's suffix: the help panel is narrow, every pixel of width counts."""
    for suffix in (" (PuLID-Flux)", "（PuLID-Flux）"):
        title = title.removesuffix(suffix)
    return title


def _titles(lang: str) -> dict:
    with open(os.path.join(REPO, "locales", lang, "nodeDefs.json"), encoding="utf-8") as f:
        return {name: _short(entry["display_name"]) for name, entry in json.load(f).items()}


def diagram_svg(node: str, lang: str) -> str:
    boxes, edges = DIAGRAMS[node]
    titles = _titles(lang)
    core = CORE | (CORE_ZH if lang == "zh" else {})
    label = {key: titles.get(key) or core.get(key) or _short(PENDING_TITLES[key]) for key, _, _ in boxes}
    columns = max(c for _, c, _ in boxes) + 1
    width = [max(_text_width(label[k], 13) + 20 for k, c, _ in boxes if c == col) for col in range(columns)]
    gap, box_h, row_h, pad = 92, 32, 46, 12
    top = min(r for _, _, r in boxes)
    left = [pad + sum(width[:col]) + gap * col for col in range(columns)]
    place = {k: (left[c], pad + (r - top) * row_h, width[c]) for k, c, r in boxes}
    total_w = left[-1] + width[-1] + pad
    total_h = pad * 2 + (max(r for _, _, r in boxes) - top) * row_h + box_h
    out = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{total_w:.0f}' height='{total_h:.0f}' "
            f"viewBox='0 0 {total_w:.0f} {total_h:.0f}' {FONT}>"),
           "<rect width='100%' height='100%' rx='8' fill='#1e1e1e'/>"]
    for src, dst, text in edges:
        x1, y1, w1 = place[src]
        x2, y2, _ = place[dst]
        ax, ay, bx, by = x1 + w1, y1 + box_h / 2, x2, y2 + box_h / 2
        mid = (ax + bx) / 2
        out.append(f"<path d='M{ax:.1f},{ay:.1f} C{mid:.1f},{ay:.1f} {mid:.1f},{by:.1f} {bx:.1f},{by:.1f}' "
                   f"fill='none' stroke='#9aa4b8' stroke-width='1.6'/>")
        out.append(f"<circle cx='{bx:.1f}' cy='{by:.1f}' r='3.2' fill='#9aa4b8'/>")
        if text:  # at the end of the edge that has no other edge (labels of a fan-out or fan-in never collide)
            fan_out = sum(1 for s, _, _ in edges if s == src) > 1
            tx, ty, anchor = (bx - 8, by - 6, "end") if fan_out else (ax + 8, ay - 6, "start")
            out.append(f"<text x='{tx:.1f}' y='{ty:.1f}' font-size='11' fill='#c9d1e0' text-anchor='{anchor}' "
                       f"paint-order='stroke' stroke='#1e1e1e' stroke-width='3'>{escape(text)}</text>")
    for key, _, _ in boxes:
        x, y, w = place[key]
        kind = "this" if key == node else "file" if key in FILES else "core" if key in CORE else "pack"
        fill, ink = COLOURS[kind]
        dash = " stroke-dasharray='4 3'" if kind == "file" else ""
        out.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{box_h}' rx='6' fill='{fill}' "
                   f"stroke='#7f8aa3' stroke-width='1'{dash}/>")
        weight = " font-weight='600'" if kind == "this" else ""
        out.append(f"<text x='{x + w / 2:.1f}' y='{y + box_h / 2 + 4.5:.1f}' font-size='13' fill='{ink}' "
                   f"text-anchor='middle'{weight}>{escape(label[key])}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_png(path: str, rgb: np.ndarray, colours: int = 192) -> None:
    """A small PNG: the pixels reduced to a palette (photos stay recognisable, files shrink by about 3x)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=0).save(
        path, optimize=True)


def labelled(rgb: np.ndarray, note: str = TEST_MODELS_NOTE) -> np.ndarray:
    """The picture with a band underneath that says how it was made."""
    import cv2

    w = rgb.shape[1]
    band = np.full((22, w, 3), 30, np.uint8)
    scale = min(0.45, (w - 8) / max(1, cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0]))
    cv2.putText(band, note, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, scale, (220, 220, 220), 1, cv2.LINE_AA)
    return np.concatenate([rgb, band])


def resized(rgb: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def to_uint8(image) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().numpy()


def previews(root: str) -> dict[str, np.ndarray]:
    """The previews the nodes draw, from the test photos and the test models."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests"))
    if REPO not in sys.path:
        sys.path.append(REPO)
    from support import curation_fixtures as fx
    from support import encoder_fakes as fakes
    from support.encoder_models import make_models
    from encoders import similarity
    from encoders.references import ReferenceSettings, encode_references
    from pulid_flux import TINY, IDFormer
    from pulid_flux.curated_fusion import IdTokenMaker

    torch.manual_seed(0)
    maker = IdTokenMaker(IDFormer(TINY).eval().requires_grad_(False))
    encoders = make_models(os.path.join(root, "one"))
    astronaut = fx.astronaut()
    with torch.no_grad():
        plain = encode_references(encoders, maker, [astronaut], ReferenceSettings())
        small = np.ascontiguousarray(astronaut[::4, ::4])  # 128 px: the face is about 28 px
        curated = encode_references(encoders, maker, [astronaut, fx.blurred(astronaut, 2.0), small],
                                    ReferenceSettings(curate="drop"))
    pictures = {"preview_apply.png": labelled(resized(to_uint8(plain.face_preview[0]), 512)),
                "preview_curation.png": labelled(resized(np.concatenate(list(to_uint8(curated.face_preview))), 512))}

    # Face similarity on t1.jpg: the test detector reports boxes where tests/support placed the people's landmarks.
    group = fx.group_photo()
    side = max(group.shape[:2])
    boxes = []
    for kps in fx.GROUP_KPS[[0, 2, 5]]:  # the test detector reports at most three faces
        eye_y, mouth_y = kps[:2, 1].mean(), kps[3:, 1].mean()
        w = abs(kps[1, 0] - kps[0, 0]) / 0.4
        h = max(mouth_y - eye_y, w * 0.3) / 0.36
        x1, y1 = kps[:2, 0].min() - 0.3 * w, eye_y - 0.42 * h
        boxes.append(fakes.FakeFace((x1 / side, y1 / side, (x1 + w) / side, (y1 + h) / side)))
    six = make_models(os.path.join(root, "six"), faces=tuple(boxes))
    reference, _ = similarity.reference_embedding(encoders.face_analysis, [astronaut])
    scores = similarity.score_images(six.face_analysis, [group], reference[0])
    pictures["similarity_annotated.png"] = labelled(resized(similarity.annotate(group, scores[0]), 640),
                                                    "made with the pack's test models (random weights): the scores "
                                                    "mean nothing")
    return pictures


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    written = []
    for node in DIAGRAMS:
        for lang, suffix in (("en", ""), ("zh", ".zh")):
            path = os.path.join(OUT, f"graph_{node}{suffix}.svg")
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(diagram_svg(node, lang))
            written.append(path)
    with tempfile.TemporaryDirectory(prefix="pulid_doc_pictures_") as root:
        for name, rgb in previews(root).items():
            write_png(os.path.join(OUT, name), rgb)
            written.append(os.path.join(OUT, name))
    total = sum(os.path.getsize(p) for p in written)
    print(f"wrote {len(written)} pictures into {os.path.relpath(OUT, REPO)}/ ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
