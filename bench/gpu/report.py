"""The floors each figure is held against, and the one table the check prints (Markdown, to paste into
bench/RESULTS.md). FLOPs come from bench/step_overhead.py's analytic count; times over FLOP floors use the device's
own measured matrix-product rate."""
from __future__ import annotations

import dataclasses
import json
import os

from bench.step_overhead import ca_flops, flux_flops

GIB = 1024 ** 3
COLUMNS = ("figure", "dtype", "image", "cfg", "compile", "plain", "patched", "patched / plain", "floor", "÷ floor",
           "note")
STEP, VRAM, FLOPS = "step time", "peak VRAM", "FLOPs per step (torch count)"
ENCODE_APPLY = "encode per photo, Apply's path"
ENCODE_LOCATE = "face detection + ArcFace per photo"
ENCODE_EMBED = "BiSeNet + EVA-CLIP per photo"
ENCODE_ID = "ID encoder per photo"


@dataclasses.dataclass
class Row:
    figure: str
    dtype: str = "—"
    image: str = "—"
    cfg: str = "—"
    compile: str = "—"
    plain: str = "—"
    patched: str = "—"
    ratio: str = "—"
    floor: str = "—"
    vs_floor: str = "—"
    note: str = ""

    def cells(self) -> list[str]:
        return [self.figure, self.dtype, self.image, self.cfg, self.compile, self.plain, self.patched, self.ratio,
                self.floor, self.vs_floor, self.note]

    @property
    def key(self) -> tuple:
        return self.figure, self.dtype, self.image, self.cfg, self.compile


def image_label(size) -> str:
    return f"{size[0]}x{size[1]}"


def cfg_label(cfg: float) -> str:
    return "1" if cfg == 1.0 else f"{cfg:g}, uncond_id"


def img_tokens(size) -> int:
    return (size[0] // 16) * (size[1] // 16)


@dataclasses.dataclass(frozen=True)
class StepFloor:
    flux: float  # FLOPs of one forward per sample
    ca: float  # FLOPs the cross-attentions add per sample

    @property
    def ratio(self) -> float:
        return 1 + self.ca / self.flux


def step_floor(scale, pulid_cfg, n_ca: int, size) -> StepFloor:
    n = img_tokens(size)
    return StepFloor(flux_flops(n, scale.txt_tokens, scale.n_double, scale.n_single, hidden=scale.hidden),
                     ca_flops(n, n_ca, pulid_cfg.num_queries, pulid_cfg.ca_inner_dim, hidden=scale.hidden))


def vram_bound(pulid_cfg, n_ca: int, ca_weight_bytes: int, size, batch: int, act_bytes: int) -> tuple[float, float]:
    """What the pack may add to the peak: the cross-attentions' weights, plus one cross-attention's activations
    (norm2(img), q, the attention output, to_out's output and the updated image tokens) and the ID keys/values
    kept for the run."""
    n = img_tokens(size)
    acts = batch * n * (3 * pulid_cfg.img_dim + 2 * pulid_cfg.ca_inner_dim) * act_bytes
    kv = n_ca * batch * pulid_cfg.num_queries * 2 * pulid_cfg.ca_inner_dim * act_bytes
    return float(ca_weight_bytes), float(acts + kv)


def seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def step_row(scale, dtype_label, size, cfg, compiled: str, result: dict, floor: StepFloor, rate: float) -> Row:
    batch = 2 if cfg > 1 else 1
    ratio = result["patched_s"] / result["plain_s"]
    flop_time = floor.flux * batch / rate
    note = (f"overhead {(ratio - 1) / (floor.ratio - 1):.2f}x the floor's; plain at "
            f"{result['plain_s'] / flop_time:.2f}x its FLOP time ({floor.flux * batch:.3g} FLOP)")
    if "graph_breaks" in result:
        sites = result["break_sites"]
        breaks = result["graph_breaks"]
        note += (f"; graph breaks patched {breaks['patched']} / plain {breaks['plain']} (patched at: "
                 f"{'; '.join(sites['patched']) or 'none'}; plain at: {'; '.join(sites['plain']) or 'none'})"
                 f", graphs {result['graphs']['patched']} / "
                 f"{result['graphs']['plain']}, recompiles in timed steps {result['recompiles']['patched']} / "
                 f"{result['recompiles']['plain']}; compile + 2 steps {result['first_run_s']['patched']:.1f} s / "
                 f"{result['first_run_s']['plain']:.1f} s")
    else:
        note += f"; {result['steps_timed']} steps each"
    return Row(STEP, dtype_label, image_label(size), cfg_label(cfg), compiled, seconds(result["plain_s"]),
               seconds(result["patched_s"]), f"{ratio:.4f}", f"{floor.ratio:.4f}", f"{ratio / floor.ratio:.3f}", note)


def vram_row(dtype_label, size, cfg, result: dict, bound: tuple[float, float]) -> Row:
    weights, acts = bound
    row = Row(VRAM, dtype_label, image_label(size), cfg_label(cfg), "off",
              floor=f"+{(weights + acts) / GIB:.3f} GiB",
              note=f"bound: cross-attention weights {weights / GIB:.3f} GiB + activations {acts / GIB:.3f} GiB")
    if result.get("plain_peak") is None:
        row.plain = row.patched = "n/a (CPU)"
        return row
    added = result["patched_peak"] - result["plain_peak"]
    row.plain, row.patched = f"{result['plain_peak'] / GIB:.2f} GiB", f"{result['patched_peak'] / GIB:.2f} GiB"
    row.ratio, row.vs_floor = f"+{added / GIB:.3f} GiB", f"{added / (weights + acts):.2f}"
    return row


def flops_row(dtype_label, size, counted_plain: int, counted_patched: int, floor: StepFloor) -> Row:
    counted_ratio = counted_patched / counted_plain
    return Row(FLOPS, dtype_label, image_label(size), "1", "off", f"{counted_plain:.4g}", f"{counted_patched:.4g}",
               f"{counted_ratio:.4f}", f"{floor.ratio:.4f}", f"{counted_ratio / floor.ratio:.3f}",
               f"counted / analytic: plain {counted_plain / floor.flux:.3f}, added "
               f"{(counted_patched - counted_plain) / floor.ca:.3f} "
               "(torch.utils.flop_counter vs bench/step_overhead.py)")


def encoder_rows(dtype_label, result: dict, rate: float, detector_note: str) -> list[Row]:
    def timed_row(figure, seconds_per_photo, flops=None, note=""):
        row = Row(figure, dtype_label, plain=seconds(seconds_per_photo), note=note)
        if flops:
            floor_s = flops / rate
            row.floor, row.vs_floor = seconds(floor_s), f"{seconds_per_photo / floor_s:.1f}"
            row.note = (note + "; " if note else "") + f"{flops:.3g} FLOP per photo"
        return row

    photos = f"{result['photos']} photo(s) per encoding, {result['faces']} face(s) found"
    return [timed_row(ENCODE_APPLY, result["apply_s"], note=f"cache emptied; the encoders loaded for the pass and "
                                                             f"offloaded after it; {photos}"),
            timed_row(ENCODE_LOCATE, result["locate_s"], note=detector_note),
            timed_row(ENCODE_EMBED, result["embed_s"], result["embed_flops"], "encoders resident"),
            timed_row(ENCODE_ID, result["id_encoder_s"], result["id_encoder_flops"], "encoders resident")]


def not_measured(key: tuple, why: str) -> Row:
    figure, dtype, image, cfg, compiled = key
    return Row(figure, dtype, image, cfg, compiled, note=why)


def markdown(header: list[str], rows: list[Row]) -> str:
    lines = list(header) + ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(out_dir: str | None, text: str, data: dict) -> None:
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out_dir, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
