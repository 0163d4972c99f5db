"""One command, one process: full-size FLUX.1-dev and PuLID-Flux with random weights built on the GPU, then per-step
time plain vs patched (bf16, fp8_e4m3fn; 1024x1024, 1024x1536; cfg 1, true CFG with uncond_id; torch.compile off
and on), peak VRAM, the encoders per photo, and one table of every figure beside its FLOP floor.

  python bench/gpu/prepare.py                     # here, once: the carried ComfyUI code and wheels
  python -m bench.gpu --out "$OUT"                # on the GPU machine (README.md beside this file)
  python -m bench.gpu --toy                       # the same on the CPU at toy size (tests/test_gpu_check.py)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
import traceback

from . import bootstrap

SECTIONS = ("encoders", "flops", "eager", "compile")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="CPU, 2 double + 4 single blocks, tiny widths, 256 px")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.md/.json (default: $OUT)")
    ap.add_argument("--carry", default=bootstrap.CARRY, help="the prepared folder (default: bench/gpu/carry)")
    ap.add_argument("--comfyui", help="ComfyUI code to import (default: the carried copy)")
    ap.add_argument("--budget-s", type=float, help="start no new measurement after this many seconds")
    ap.add_argument("--dtypes", help="comma-separated weight dtypes to measure (default: all of the size's; "
                                     "full: bf16,fp8_e4m3fn; toy: fp32,fp8_e4m3fn)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all); for a re-run")
    ap.add_argument("--steps", type=int, help="sampling steps per timed run")
    ap.add_argument("--rounds", type=int, help="interleaved plain/patched runs after the VRAM runs")
    return ap.parse_args(argv)


class Check:
    """Runs the measurements in order of importance, each in its own try, writing the table after each."""

    def __init__(self, args, scale, recorder, pack, comfy_version: str, manifest: dict, site_note: str):
        import torch

        from . import measure, report

        self.args, self.scale, self.recorder, self.pack = args, scale, recorder, pack
        self.measure, self.report, self.torch = measure, report, torch
        self.start = time.time()
        self.rows = {"step": [], "vram": [], "flops": [], "encode": []}
        self.errors: list[str] = []
        self.data: dict = {"scale": scale.name, "cases": []}
        self.header = self._header(comfy_version, manifest, site_note)
        known = [label for label, _ in scale.dtypes]
        self.dtype_labels = [d.strip() for d in (args.dtypes or ",".join(known)).split(",") if d.strip()]
        if set(self.dtype_labels) - set(known):
            raise SystemExit(f"--dtypes: use some of {', '.join(known)} at this size")

    def elapsed(self) -> float:
        return time.time() - self.start

    def over_budget(self) -> bool:
        return self.elapsed() > self.scale.budget_s

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def _header(self, comfy_version, manifest, site_note) -> list[str]:
        torch, s = self.torch, self.scale
        if s.device == "cuda":
            memory = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
            device = f"{torch.cuda.get_device_name(0)} ({memory:.0f} GiB)"
        else:
            device = f"CPU ({os.cpu_count()} cores), toy size"
        import onnxruntime

        return [
            f"## GPU check (`python -m bench.gpu{' --toy' if s.name == 'toy' else ''}`): {device}",
            "",
            f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}, ComfyUI "
            f"{comfy_version} ({'carried copy' if not self.args.comfyui else self.args.comfyui}), prepared at commit "
            f"{manifest.get('repo_commit', '?')}; comfy-aimdo's dynamic VRAM off (ComfyUI imported as a library), "
            f"models kept on the device between runs",
            f"- FLUX.1-dev {s.n_double} double + {s.n_single} single blocks, width {s.hidden}, random weights built "
            f"on the device through ComfyUI's model detection; PuLID-Flux {s.pulid} ({self._n_ca()} cross-"
            f"attentions); {s.txt_tokens} text tokens; KSampler euler/simple, {s.steps} steps a run, a step = the "
            f"interval between two sampler callbacks (medians); weight 1, start 0, end 1",
            f"- face detector: CPU onnxruntime {onnxruntime.__version__} on generated antelopev2-signature models "
            f"(tests/support/encoder_fakes), not SCRFD-10G / glintr100: their times are not the real models' times",
            f"- torch.compile as ComfyUI's TorchCompileModel node applies it (comfy_api.torch_helpers."
            f"set_torch_compile_wrapper, transformer_options unguarded), backend {s.compile_backend}"
            + (" (dynamo's graph capture, no code generation: graph breaks as with inductor)"
               if s.compile_backend == "eager" else "")
            + "; graph breaks and graphs from torch._dynamo's counters, their places from its graph_breaks log",
            "- goals (issue 27): step time patched/plain within 1.10x the floor's ratio at 1024x1024 (÷ floor <= "
            "1.10); VRAM added within the cross-attentions' weights plus activations (÷ floor <= 1)",
            f"- {site_note}",
        ]

    def _n_ca(self) -> int:
        cfg = getattr(self.pack.pulid_flux.config, self.scale.pulid)
        return len(self.pack.pulid_flux.injection_points(self.scale.n_double, self.scale.n_single, cfg))

    def attempt(self, what: str, fn, *skip_keys):
        """fn() or, when it fails, rows saying so for skip_keys (the traceback goes to the log)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not cost the others
            traceback.print_exc()
            why = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            self.errors.append(f"{what}: {why}")
            self.log(f"{what} FAILED ({why})")
            for kind, key in skip_keys:
                self.rows[kind].append(self.report.not_measured(key, why))
            return None

    def write(self) -> str:
        r = self.report
        imports = self.recorder_note()
        rows = self.rows["step"] + self.rows["vram"] + self.rows["flops"] + self.rows["encode"]
        took = f"- measurements took {self.elapsed():.0f} s (after the imports)"
        text = r.markdown(self.header + [f"- {imports}", took], rows)
        r.write(self.args.out, text,
                {**self.data, "errors": self.errors, "rows": [dataclasses.asdict(row) for row in rows]})
        return text

    def recorder_note(self) -> str:
        missing = self.recorder.missing_on_gpu(self.provided, self.comfy_dir)
        self.missing = missing
        if missing:
            listed = ", ".join(f"{name} (imported by {os.path.relpath(where, bootstrap.REPO_ROOT)})"
                               for name, where in missing.items())
            return f"imports: NOT on the GPU image and not carried: {listed}"
        return (f"imports: {len(self.recorder.seen)} third-party modules imported by ComfyUI, the pack and the "
                f"carried packages; all on the GPU image or carried")

    # --- the measurements -----------------------------------------------------------------------------------
    def run(self) -> int:
        m, r, s, torch = self.measure, self.report, self.scale, self.torch
        from . import models

        sections = {name.strip() for name in self.args.only.split(",") if name.strip()}
        if sections - set(SECTIONS):
            raise SystemExit(f"--only: unknown section(s) {', '.join(sorted(sections - set(SECTIONS)))}; use "
                             f"{', '.join(SECTIONS)}")
        compute = torch.bfloat16 if s.device == "cuda" else torch.float32
        self.rate = m.matmul_rate(s.device, compute)
        rate = f"{self.rate / 1e12:.0f} TFLOP/s" if self.rate > 1e12 else f"{self.rate / 1e9:.0f} GFLOP/s"
        self.header.append(f"- measured {str(compute).split('.')[-1]} matrix-product rate {rate} (one "
                           f"{'8192' if s.device == 'cuda' else '512'}³ product): FLOP floors in time divide by it")
        self.log(f"matrix-product rate {self.rate / 1e12:.3f} TFLOP/s")
        pulid = models.build_pulid(self.pack, s)
        pulid_cfg = pulid.model.cfg
        ca_bytes = sum(p.numel() * p.element_size() for p in pulid.model.pulid_ca.parameters())
        self.log("PuLID-Flux built")
        id_tokens = torch.randn(1, pulid_cfg.num_queries, pulid_cfg.output_dim)
        if "encoders" in sections:
            photos, photo_what = models.face_photos(s.photos)
            self.header.append(f"- reference photos: {photo_what}")
            encoded = self.attempt("encoders", lambda: self._encoders(models, pulid, photos),
                                   *[("encode", (f, "bf16" if s.device == "cuda" else "fp32", "—", "—", "—"))
                                     for f in (r.ENCODE_APPLY, r.ENCODE_LOCATE, r.ENCODE_EMBED, r.ENCODE_ID)])
            if encoded is not None:
                id_tokens = encoded["id_tokens"]  # the patched runs use the photo's own ID tokens
            self.write()
        uncond = pulid.uncond_tokens()
        sampler = m.Sampler(s)
        n_ca = self._n_ca()
        dtypes = [(label, dtype) for label, dtype in s.dtypes if label in self.dtype_labels]
        for dtype_label, dtype in dtypes:  # one model at a time: eager rows, then its torch.compile rows
            cases = [case for case in s.compile_cases if case[0] == dtype_label] if "compile" in sections else []
            counts = "flops" in sections and dtype_label == dtypes[0][0]
            if not ("eager" in sections or cases or counts):
                continue
            base = self.attempt(f"build {dtype_label}", lambda: models.build_flux(s, dtype))
            if base is None:
                continue
            self.log(f"FLUX.1 {dtype_label} built")
            patch = self.pack.comfy_layer.patching.patch_model
            patched = {1.0: patch(base, pulid, id_tokens, uncond, 1.0, 0.0, 1.0, uncond="same"),
                       3.5: patch(base, pulid, id_tokens, uncond, 1.0, 0.0, 1.0, uncond="uncond_id")}
            if counts:
                for size in s.sizes:
                    key = (r.FLOPS, dtype_label, r.image_label(size), "1", "off")
                    self.attempt(f"FLOPs {size}", lambda: self._flops(sampler, base, patched[1.0], size, dtype_label,
                                                                      pulid_cfg, n_ca), ("flops", key))
            if "eager" in sections:
                self._eager_cases(sampler, base, patched, pulid, dtype_label, pulid_cfg, n_ca, ca_bytes)
            for _, size, cfg in cases:
                key = (r.STEP, dtype_label, r.image_label(size), r.cfg_label(cfg), s.compile_backend)
                if self.elapsed() > s.budget_s - s.compile_reserve_s:  # a compile takes minutes: start it early
                    self.rows["step"].append(r.not_measured(key, "skipped: time budget"))
                    continue
                self.attempt(f"compile {dtype_label} {size} cfg {cfg}",
                             lambda: self._compiled(sampler, base, patched[cfg], size, cfg, dtype_label, pulid_cfg,
                                                    n_ca), ("step", key))
                self.write()
            base = patched = None  # the next model is built without this one
            self._free()
        text = self.write()
        print("\n" + text, flush=True)
        if self.errors:
            print("FAILED measurements:\n  " + "\n  ".join(self.errors), flush=True)
        # modules missing on the GPU matter only for the carried ComfyUI (the one the GPU imports)
        return 1 if self.errors or (self.missing and not self.args.comfyui) else 0

    def _eager_cases(self, sampler, base, patched, pulid, dtype_label, pulid_cfg, n_ca, ca_bytes):
        r = self.report
        for size in self.scale.sizes:
            for cfg in (1.0, 3.5):
                keys = [("step", (r.STEP, dtype_label, r.image_label(size), r.cfg_label(cfg), "off")),
                        ("vram", (r.VRAM, dtype_label, r.image_label(size), r.cfg_label(cfg), "off"))]
                if self.over_budget():
                    for kind, key in keys:
                        self.rows[kind].append(r.not_measured(key, "skipped: time budget"))
                    continue
                self.attempt(f"{dtype_label} {size} cfg {cfg}",
                             lambda: self._eager(sampler, base, patched[cfg], pulid, size, cfg, dtype_label,
                                                 pulid_cfg, n_ca, ca_bytes), *keys)
                self.write()

    def _encoders(self, models, pulid, photos):
        enc = models.build_encoders(self.pack, self.scale)
        self.log("encoders built")
        result = self.measure.encoder_case(self.pack, enc, pulid, self.scale, photos)
        label = "bf16" if self.scale.device == "cuda" else "fp32"
        detector = "CPU onnxruntime, generated stand-in models: not the real detector's time"
        self.rows["encode"] += self.report.encoder_rows(label, result, self.rate, detector)
        self.data["encoders"] = {k: v for k, v in result.items() if k != "id_tokens"}
        self.log(f"encoders: Apply's path {result['apply_s']:.3f} s/photo")
        return result

    def _flops(self, sampler, base, patched, size, dtype_label, pulid_cfg, n_ca):
        counted = [self.measure.counted_step_flops(sampler, model, size) for model in (base, patched)]
        floor = self.report.step_floor(self.scale, pulid_cfg, n_ca, size)
        self.rows["flops"].append(self.report.flops_row(dtype_label, size, counted[0], counted[1], floor))
        self.data["cases"].append({"flops": counted, "size": size, "analytic": [floor.flux, floor.ca]})

    def _eager(self, sampler, base, patched, pulid, size, cfg, dtype_label, pulid_cfg, n_ca, ca_bytes):
        r = self.report
        unload = lambda: self.pack.comfy_layer.models.offload(pulid.ca)  # noqa: E731
        result = self.measure.eager_case(sampler, base, patched, unload, size, cfg)
        floor = r.step_floor(self.scale, pulid_cfg, n_ca, size)
        act_bytes = 2 if self.scale.device == "cuda" else 4
        bound = r.vram_bound(pulid_cfg, n_ca, ca_bytes, size, 2 if cfg > 1 else 1, act_bytes)
        self.rows["step"].append(r.step_row(self.scale, dtype_label, size, cfg, "off", result, floor, self.rate))
        self.rows["vram"].append(r.vram_row(dtype_label, size, cfg, result, bound))
        self.data["cases"].append({"dtype": dtype_label, "size": size, "cfg": cfg, **result})
        self.log(f"{dtype_label} {r.image_label(size)} cfg {cfg}: plain {result['plain_s']:.4f} s, patched "
                 f"{result['patched_s']:.4f} s ({result['patched_s'] / result['plain_s']:.4f}x, "
                 f"floor {floor.ratio:.4f})")

    def _compiled(self, sampler, base, patched, size, cfg, dtype_label, pulid_cfg, n_ca):
        r = self.report
        out = self.measure.compiled_case(sampler, base, patched, size, cfg, self.scale.compile_backend,
                                         bootstrap.REPO_ROOT, deadline=self.start + self.scale.budget_s)
        if out["plain"] is None:  # the patched compile used the time left: its figures without the ratio
            out["plain"] = {"step_s": float("nan"), "first_run_s": float("nan"), "graphs": "?", "graph_breaks": "?",
                            "break_sites": ["not compiled: time budget"], "recompiles": "?"}
        result = {"plain_s": out["plain"]["step_s"], "patched_s": out["patched"]["step_s"],
                  **{k: {v: out[v][k] for v in out} for k in ("graph_breaks", "graphs", "recompiles", "first_run_s",
                                                                 "break_sites")}}
        floor = r.step_floor(self.scale, pulid_cfg, n_ca, size)
        self.rows["step"].append(r.step_row(self.scale, dtype_label, size, cfg, self.scale.compile_backend, result,
                                            floor, self.rate))
        self.data["cases"].append({"dtype": dtype_label, "size": size, "cfg": cfg, "compiled": out})
        self.log(f"compiled {dtype_label} {r.image_label(size)}: graph breaks patched "
                 f"{out['patched']['graph_breaks']} / plain {out['plain']['graph_breaks']}")

    def _free(self) -> None:
        """Give the last model's memory back (ComfyUI's loaded-model list holds it too)."""
        import gc

        import comfy.model_management as mm

        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
        if self.scale.device == "cuda":
            self.log(f"memory allocated after freeing: {self.torch.cuda.memory_allocated() / 2**30:.2f} GiB")


def main(argv=None) -> int:
    recorder = bootstrap.start_recording()  # before torch and ComfyUI are imported
    args = parse_args(argv)
    from .models import FULL, TOY

    scale = TOY if args.toy else FULL
    scale = dataclasses.replace(scale, **{k: v for k, v in (("budget_s", args.budget_s), ("steps", args.steps),
                                                              ("rounds", args.rounds)) if v is not None})
    manifest = bootstrap.read_manifest(args.carry)
    site, provided, left_out = bootstrap.install_wheels(os.path.join(args.carry, "wheels"))
    if site:
        recorder.add_root(site)
    for name in provided:  # their imports are checked too, wherever they are imported from here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            recorder.add_root(os.path.dirname(spec.origin))
    import torch

    if scale.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this is the GPU check. On a CPU run `python -m bench.gpu --toy`.")
    if scale.device == "cpu":
        torch.set_num_threads(1)  # toy tensors: OpenMP's barriers cost more than the work (10x on a busy machine)
    comfy_dir = args.comfyui or os.path.join(args.carry, "comfyui")
    comfy_version = bootstrap.import_comfyui(comfy_dir, cpu=scale.device == "cpu")
    pack = bootstrap.import_pack()
    wheels = [w.split("-")[0] + " " + w.split("-")[1] for w in manifest.get("wheels", [])]
    site_note = (f"carried: ComfyUI code {manifest.get('comfyui_bytes', 0) / 2**20:.1f} MiB; wheels "
                 f"{', '.join(wheels) or 'none'} installed into {site}"
                 + (f" (not for this Python, its own used: {', '.join(left_out)})" if left_out else ""))
    check = Check(args, scale, recorder, pack, comfy_version, manifest, site_note)
    check.provided, check.comfy_dir = provided, comfy_dir
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
