"""Reference photos -> PuLID-Flux ID condition: detect, choose, ArcFace, align, parse, EVA02-CLIP."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .eva import EVA02_CLIP_L_336, EvaClipVision, EvaConfig, load_eva_clip
from .faces import DEFAULT_DET_SIZES, arcface_embedding, choose_face, detect_faces, load_face_analysis
from .images import align_face, limit_long_side, pad_for_detection, size_problem, to_rgb_list
from .parsing import face_features_image, load_face_parser, parse_labels


@dataclass
class FaceResult:
    """Everything PuLID needs from one reference image, plus previews. Tensors are float32 on the CPU."""
    id_cond: torch.Tensor  # [1,1280] = cat(raw ArcFace [1,512], L2-normalized EVA embedding [1,768])
    hidden_states: list[torch.Tensor]  # 5 x [1,577,1024]: EVA blocks 3,7,11,15,19 with CLS, before the final norm
    aligned: np.ndarray  # 512x512x3 uint8 RGB, FFHQ-aligned face
    parsed: np.ndarray  # 512x512x3 uint8 RGB, the EVA input before its resize (white background, gray face)
    bbox: np.ndarray  # (4,) x1, y1, x2, y2 in pixels of the input image
    kps: np.ndarray  # (5, 2) keypoints in pixels of the input image
    det_score: float
    face_count: int  # faces detected in the image
    found_by: str  # which detection pass found it, e.g. "detector 640 px" or "detector 640 px, padded image"
    ok: bool = field(default=True, init=False)


@dataclass
class NoFace:
    reason: str
    face_count: int = 0
    ok: bool = field(default=False, init=False)


@dataclass
class Located:
    """First stage of one image: the chosen face, its ArcFace embedding and aligned crop."""
    index: int
    arcface: np.ndarray
    aligned_bgr: np.ndarray
    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    face_count: int
    found_by: str


class FaceEncoders:
    """The models one reference-image encoding needs, loaded once and reused.

    `eva` and `parser` are plain torch modules: they run on whatever device/dtype they have when `encode` is
    called, so a caller may move them (e.g. to the GPU and back) between calls. Face analysis is onnxruntime."""

    def __init__(self, face_analysis, eva: EvaClipVision, parser: torch.nn.Module,
                 det_sizes=DEFAULT_DET_SIZES, pad_retry: bool = True):
        self.face_analysis = face_analysis
        self.eva = eva
        self.parser = parser
        self.det_sizes = tuple(det_sizes)
        self.pad_retry = pad_retry

    @classmethod
    def load(cls, insightface_root: str, eva_path: str, parser_path: str, providers: str = "auto",
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             eva_config: EvaConfig = EVA02_CLIP_L_336, **kwargs) -> "FaceEncoders":
        return cls(load_face_analysis(insightface_root, providers),
                   load_eva_clip(eva_path, device, dtype, eva_config),
                   load_face_parser(parser_path, device, dtype), **kwargs)

    def locate(self, rgb: np.ndarray, order: str = "largest", index: int = 0,
               image_index: int = 0) -> Located | NoFace:
        """Detection (retrying smaller detector sizes, then a padded copy), face choice, ArcFace, alignment.

        The official pipeline falls back to ArcFace on facexlib's aligned crop when InsightFace finds no face.
        Here InsightFace is the only detector (its keypoints drive the alignment), so the fallback is a second
        chance for the detector instead: smaller sizes, then the image padded with the alignment gray (faces
        that fill the frame are often missed). ArcFace always runs on the keypoints that were found."""
        problem = size_problem(*rgb.shape[:2])
        if problem:
            return NoFace(problem)
        small, scale = limit_long_side(rgb)
        frame = np.ascontiguousarray(small[:, :, ::-1])  # insightface and facexlib work in BGR
        faces, size = detect_faces(self.face_analysis, frame, self.det_sizes)
        offset, how = 0, ""
        if not faces and self.pad_retry:
            padded, pad = pad_for_detection(frame)
            faces, size = detect_faces(self.face_analysis, padded, self.det_sizes)
            if faces:
                frame, offset, how = padded, pad, ", padded image"
        if not faces:
            tried = ", ".join(str(s) for s in self.det_sizes)
            also = ", and on a padded copy" if self.pad_retry else ""
            return NoFace(f"no face detected (detector sizes {tried} px{also})")
        face, reason = choose_face(faces, order, index)
        if face is None:
            return NoFace(reason, len(faces))
        return Located(
            index=image_index, arcface=arcface_embedding(self.face_analysis, frame, face),
            aligned_bgr=align_face(frame, face.kps), bbox=(face.bbox - offset) / scale,
            kps=(face.kps - offset) / scale, det_score=face.det_score, face_count=len(faces),
            found_by=f"detector {size} px{how}")

    @torch.no_grad()
    def _embed(self, located: list[Located], use_gray: bool) -> list[FaceResult]:
        aligned_rgb = np.stack([item.aligned_bgr[:, :, ::-1] for item in located])
        rgb = torch.from_numpy(aligned_rgb.copy()).permute(0, 3, 1, 2).float() / 255.0
        features = face_features_image(rgb, parse_labels(self.parser, rgb).cpu(), use_gray)
        embedding, hidden = self.eva(self.eva.preprocess(features))
        eva_normed = F.normalize(embedding.float(), dim=-1).cpu()
        hidden = [h.float().cpu() for h in hidden]
        parsed = (features * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        results = []
        for i, item in enumerate(located):
            arcface = torch.from_numpy(item.arcface).float().view(1, -1)
            results.append(FaceResult(
                id_cond=torch.cat([arcface, eva_normed[i:i + 1]], dim=-1), hidden_states=[h[i:i + 1] for h in hidden],
                aligned=np.ascontiguousarray(aligned_rgb[i]), parsed=np.ascontiguousarray(parsed[i]),
                bbox=item.bbox.astype(np.float32), kps=item.kps.astype(np.float32), det_score=item.det_score,
                face_count=item.face_count, found_by=item.found_by))
        return results

    def locate_all(self, images, order: str = "largest", index: int = 0, batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> list[Located | NoFace]:
        """The first stage for every image, in input order: Located (the chosen face, its ArcFace embedding and
        aligned crop) or NoFace with the reason. progress(done, total) after each image, total counting the
        BiSeNet/EVA-CLIP batches still to come as if every image not yet located had a face (see `encode`)."""
        rgbs = to_rgb_list(images)
        found: list[Located | NoFace] = []
        for i, rgb in enumerate(rgbs):
            found.append(self.locate(rgb, order, index, image_index=i))
            if progress is not None:
                faces = sum(isinstance(item, Located) for item in found) + len(rgbs) - len(found)
                progress(len(found), len(rgbs) + -(-faces // max(1, batch_size)))
        return found

    def embed(self, located: list[Located], use_gray: bool = True, batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> list[FaceResult]:
        """The second stage: BiSeNet and EVA-CLIP on the located faces in batches of `batch_size`, one FaceResult
        per item in the order given. A face's result depends on the batch it shares (float rounding), so the same
        items in the same batches give the same bits. progress(done, batches) is called after each batch."""
        step = max(1, batch_size)
        batches = -(-len(located) // step)
        results: list[FaceResult] = []
        for start in range(0, len(located), step):
            results += self._embed(located[start:start + step], use_gray)
            if progress is not None:
                progress(start // step + 1, batches)
        return results

    def encode(self, images, order: str = "largest", index: int = 0, use_gray: bool = True,
               batch_size: int = 8, progress: Callable[[int, int], None] | None = None) -> list[FaceResult | NoFace]:
        """One result per input image, in input order: FaceResult, or NoFace with the reason.

        images: ComfyUI IMAGE [B,H,W,C] float 0..1 (C = 1/3/4), numpy HxW[xC] uint8 RGB/RGBA/gray, or a list.
        order/index: which face when several are found (see faces.order_faces); index may be negative.
        Detection runs per image (locate_all); the faces found then go through BiSeNet and EVA-CLIP in batches of
        `batch_size` (embed). progress(done, total) is called after each detection and each batch
        (total = images + batches)."""
        found = self.locate_all(images, order, index, batch_size, progress)
        faces = [item for item in found if isinstance(item, Located)]
        embedded = self.embed(faces, use_gray, batch_size, progress=None if progress is None else
                              lambda done, batches: progress(len(found) + done, len(found) + batches))
        results: list[FaceResult | NoFace] = list(found)
        for item, result in zip(faces, embedded):
            results[item.index] = result
        return results
