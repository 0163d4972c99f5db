"""Seeded stand-ins for the encoder model files, in their real formats, for tests and benchmarks.

Nothing here is shipped as a file: everything is generated into a folder the caller gives (needs `onnx`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from encoders.eva import BAAI_TO_TIMM_RENAMES, EVA02_CLIP_L_336, EvaConfig, expected_shapes
from encoders.faces import DETECTOR_FILE, RECOGNIZER_FILE

TINY_EVA = EvaConfig(width=32, depth=20, heads=2)  # same keys and token count as EVA02-CLIP-L-336, ~0.5 M params
FULL_EVA = EVA02_CLIP_L_336
_STRIDES = (8, 16, 32)
_KPS_IN_BOX = ((0.3, 0.42), (0.7, 0.42), (0.5, 0.6), (0.35, 0.78), (0.65, 0.78))  # eyes, nose, mouth corners


@dataclass(frozen=True)
class FakeFace:
    """A face the fake detector reports, as fractions of its (letterboxed, square) input canvas."""
    box: tuple[float, float, float, float]
    # score = sigmoid(1000 * (texture - threshold)), texture = mean of min(|horizontal step|, 0.05) over the
    # normalized input: high on photos, low on flat images even with a few hard edges (black padded with gray)
    threshold: float = 0.004

    @property
    def kps(self) -> list[tuple[float, float]]:
        x1, y1, x2, y2 = self.box
        return [(x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)) for fx, fy in _KPS_IN_BOX]


ONE_FACE = (FakeFace((0.36, 0.14, 0.58, 0.44)),)
THREE_FACES = (FakeFace((0.40, 0.10, 0.60, 0.40)),  # middle, largest
               FakeFace((0.05, 0.30, 0.15, 0.42), 0.0041),  # left, smallest, lowest
               FakeFace((0.75, 0.05, 0.90, 0.25), 0.0042))  # right, medium, highest


class _Graph:
    """Tiny helper to write ONNX graphs node by node with unique names."""

    def __init__(self):
        from onnx import helper

        self.helper, self.nodes, self.inits, self.count = helper, [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self.count += 1
        name = f"const_{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        self.count += 1
        out = output or f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self.count}", **attrs))
        return out


def detector_onnx(faces=ONE_FACE):
    """SCRFD-shaped detector (antelopev2 signature): input `input.1` [1,3,H,W]; 9 outputs, scores/boxes/keypoints
    for strides 8/16/32. Face i is decoded from every anchor of stride (32, 16, 8)[i]; NMS keeps one per face."""
    import onnx
    from onnx import TensorProto, helper

    if not 1 <= len(faces) <= 3:
        raise ValueError("the fake detector reports 1 to 3 faces")
    g, i64 = _Graph(), np.int64
    shape = g.op("Shape", "input.1")
    height, width = g.op("Gather", shape, g.const(2, i64)), g.op("Gather", shape, g.const(3, i64))
    wh = g.op("Concat", *(g.op("Unsqueeze", g.op("Cast", d, to=TensorProto.FLOAT), g.const([0], i64))
                          for d in (width, height)), axis=0)
    steps = [g.op("Slice", "input.1", g.const([start], i64), g.const([end], i64), g.const([3], i64))
             for start, end in ((1, 2 ** 62), (0, -1))]
    texture = g.op("ReduceMean", g.op("Min", g.op("Abs", g.op("Sub", *steps)), g.const(0.05)), keepdims=0)
    by_stride = {stride: face for stride, face in zip((32, 16, 8), faces)}
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride in _STRIDES:
        face = by_stride.get(stride, FakeFace((0.0, 0.0, 0.05, 0.05)))  # decoded but scored 0: never reported
        cols = g.op("Div", width, g.const(stride, i64))
        n = g.op("Mul", g.op("Mul", g.op("Div", height, g.const(stride, i64)), cols), g.const(2, i64))
        cell = g.op("Div", g.op("Range", g.const(0, i64), n, g.const(1, i64)), g.const(2, i64))  # 2 anchors/cell
        xy = [g.op("Unsqueeze", g.op("Cast", g.op("Mul", g.op(op, cell, cols), g.const(stride, i64)),
                                     to=TensorProto.FLOAT), g.const([1], i64)) for op in ("Mod", "Div")]
        centers = g.op("Concat", *xy, axis=1)  # [N,2] anchor centres, row-major
        corners = g.op("Mul", g.const(np.reshape(face.box, (2, 2))), wh)
        first, second = (g.op("Gather", corners, g.const(i, i64), axis=0) for i in (0, 1))
        s = g.const(float(stride))
        outputs["bbox"].append(g.op("Concat", g.op("Div", g.op("Sub", centers, first), s),
                                    g.op("Div", g.op("Sub", second, centers), s), axis=1))
        kps = g.op("Reshape", g.op("Mul", g.const(face.kps), wh), g.const([1, 10], i64))
        tiled = g.op("Tile", centers, g.const([1, 5], i64))
        outputs["kps"].append(g.op("Div", g.op("Sub", kps, tiled), s))
        score = (g.op("Sigmoid", g.op("Mul", g.op("Sub", texture, g.const(face.threshold)), g.const(1000.0)))
                 if stride in by_stride else g.const(0.0))
        count = g.op("Concat", g.op("Unsqueeze", n, g.const([0], i64)), g.const([1], i64), axis=0)
        outputs["score"].append(g.op("Expand", g.op("Reshape", score, g.const([1, 1], i64)), count))
    infos = []  # output order: scores, boxes, keypoints; each for strides 8, 16, 32
    for kind, columns in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride, value in zip(_STRIDES, outputs[kind]):
            g.op("Identity", value, output=f"{kind}_{stride}")
            infos.append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT,
                                                       [f"n{stride}", columns]))
    graph = helper.make_graph(
        g.nodes, "fake_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        infos, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="testing.encoder_fakes",
                             ir_version=8)  # IR 8 = opset 17 era; older onnxruntime refuses newer IR
    onnx.checker.check_model(model)
    return model


def arcface_onnx(seed: int = 0):
    """ArcFace-shaped recognizer: `input.1` [N,3,112,112] -> [N,512] (8x8 average pool, fixed random matrix)."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    matrix = np.random.default_rng(seed).standard_normal((3 * 14 * 14, 512)).astype(np.float32) / 14.0
    pooled = g.op("AveragePool", "input.1", kernel_shape=[8, 8], strides=[8, 8])
    g.op("MatMul", g.op("Flatten", pooled, axis=1), g.const(matrix), output="embedding")
    graph = helper.make_graph(
        g.nodes, "fake_arcface", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="testing.encoder_fakes",
                             ir_version=8)  # IR 8 = opset 17 era; older onnxruntime refuses newer IR
    onnx.checker.check_model(model)
    return model


def write_antelopev2(folder: str, nested: bool = False, faces=ONE_FACE, seed: int = 0) -> str:
    """Write scrfd_10g_bnkps.onnx and glintr100.onnx into `folder` (the antelopev2 folder), or into
    `folder/antelopev2` when nested (the release zip's layout). Returns the folder holding the files."""
    import onnx

    target = os.path.join(folder, "antelopev2") if nested else folder
    os.makedirs(target, exist_ok=True)
    onnx.save(detector_onnx(faces), os.path.join(target, DETECTOR_FILE))
    onnx.save(arcface_onnx(seed), os.path.join(target, RECOGNIZER_FILE))
    return target


def write_bisenet(path: str, seed: int = 0) -> str:
    """Random facexlib BiSeNet(19) state dict saved with torch.save, like parsing_bisenet.pth."""
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(BiSeNet(num_class=19).state_dict(), path)
    return path


def random_eva_state_dict(config: EvaConfig = TINY_EVA, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """timm-named EVA weights with sane magnitudes (norms near 1, matrices ~ N(0, 1/fan_in))."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(config).items():
        if key.endswith("bias") or key in ("cls_token", "pos_embed"):
            t = torch.randn(shape, generator=gen) * 0.02
        elif len(shape) == 1:
            t = 1.0 + torch.randn(shape, generator=gen) * 0.1
        else:
            t = torch.randn(shape, generator=gen) * float(np.prod(shape[1:])) ** -0.5
        state[key] = t.to(dtype)
    return state


def _fake_text_tower(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {"text.token_embedding.weight": torch.zeros(16, 8, dtype=dtype),
            "text.positional_embedding": torch.zeros(77, 8, dtype=dtype), "logit_scale": torch.tensor(4.6052)}


def to_baai_layout(state: dict[str, torch.Tensor], config: EvaConfig = TINY_EVA) -> dict[str, torch.Tensor]:
    """timm names -> BAAI EVA-CLIP names (visual.*), with rope buffers and a fake text tower as in the real file."""
    out = {}
    for key, value in state.items():
        name = "." + key
        for baai, timm_name in BAAI_TO_TIMM_RENAMES:
            name = name.replace(timm_name, baai)
        out["visual" + name] = value
    dtype = next(iter(state.values())).dtype
    rope = torch.zeros((config.image_size // config.patch_size) ** 2, config.width // config.heads, dtype=dtype)
    for prefix in ["visual."] + [f"visual.blocks.{i}.attn." for i in range(config.depth)]:
        out[prefix + "rope.freqs_cos"], out[prefix + "rope.freqs_sin"] = rope.clone(), rope.clone()
    return {**out, **_fake_text_tower(dtype)}


def to_open_clip_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> open_clip names (visual.trunk.*) plus a fake text tower, as open_clip_model.safetensors."""
    out = {"visual.trunk." + k: v for k, v in state.items()}
    return {**out, **_fake_text_tower(next(iter(state.values())).dtype)}


def write_eva_baai(path: str, config: EvaConfig = TINY_EVA, seed: int = 0, dtype: torch.dtype = torch.float16) -> str:
    """Random EVA02-CLIP in the layout of EVA02_CLIP_L_336_psz14_s6B.pt (torch.save of a tensor dict)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(to_baai_layout(random_eva_state_dict(config, seed, dtype), config), path)
    return path


def write_eva_open_clip(path: str, config: EvaConfig = TINY_EVA, seed: int = 0,
                        dtype: torch.dtype = torch.float16) -> str:
    """The same random weights as write_eva_baai (same seed) in the open_clip_model.safetensors layout."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(to_open_clip_layout(random_eva_state_dict(config, seed, dtype)), path)
    return path


def write_sdxl_like(path: str) -> str:
    """A small safetensors file with SDXL checkpoint key names (for wrong-file errors)."""
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, path)
    return path


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pickle code ran')",)


def write_malicious_pt(path: str, marker: str) -> str:
    """A .pt whose pickle writes `marker` when unpickled without weights_only (proof that loading refuses it)."""
    torch.save({"visual.pos_embed": torch.zeros(1), "payload": _RunsCodeWhenUnpickled(marker)}, path)
    return path
