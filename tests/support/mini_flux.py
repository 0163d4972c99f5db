"""A small stand-in for ComfyUI's Flux that follows its documented block-replace protocol
(comfy/ldm/flux/model.py v0.3.64: forward_orig, patches_replace["dit"], DIFFUSION_MODEL wrapper), so the
patch objects can be driven in CI without ComfyUI."""
import types

import torch
from torch import nn


class DoubleBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.img = nn.Linear(dim, dim)
        self.txt = nn.Linear(dim, dim)

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options={}):
        mix = torch.tanh(self.img(img)).mean(1, keepdim=True) + torch.tanh(self.txt(txt)).mean(1, keepdim=True)
        txt += 0.1 * mix  # in place, as Flux does
        return img + 0.1 * torch.tanh(self.img(img)) + 0.1 * mix + vec[:, None], txt


class SingleBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x, vec, pe, attn_mask=None, transformer_options={}):
        x += 0.1 * torch.tanh(self.lin(x)) + 0.1 * torch.tanh(self.lin(x)).mean(1, keepdim=True)  # in place
        return x


class MiniFlux(nn.Module):
    def __init__(self, dim=48, n_double=3, n_single=6, in_ch=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.img_in = nn.Linear(in_ch * 4, dim)
        self.txt_in = nn.Linear(8, dim)
        self.time_in = nn.Linear(1, dim)
        self.double_blocks = nn.ModuleList(DoubleBlock(dim) for _ in range(n_double))
        self.single_blocks = nn.ModuleList(SingleBlock(dim) for _ in range(n_single))
        self.out = nn.Linear(dim, in_ch * 4)

    def forward_orig(self, img, txt, timesteps, control=None, transformer_options={}, pass_options=True):
        vec = self.time_in(timesteps[:, None].float())
        img, txt = self.img_in(img), self.txt_in(txt)
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        opts = {"transformer_options": transformer_options} if pass_options else {}
        for i, block in enumerate(self.double_blocks):
            if ("double_block", i) in replace:
                def wrap(args, block=block):
                    o = {}
                    o["img"], o["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"])
                    return o
                out = replace[("double_block", i)]({"img": img, "txt": txt, "vec": vec, "pe": None, "attn_mask": None, **opts},
                                                   {"original_block": wrap})
                img, txt = out["img"], out["txt"]
            else:
                img, txt = block(img=img, txt=txt, vec=vec, pe=None)
            if control is not None and i < len(control.get("input", [])) and control["input"][i] is not None:
                img += control["input"][i]  # ControlNet residuals, after the block as Flux adds them
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            if ("single_block", i) in replace:
                def wrap(args, block=block):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"])}
                img = replace[("single_block", i)]({"img": img, "vec": vec, "pe": None, "attn_mask": None, **opts},
                                                   {"original_block": wrap})["img"]
            else:
                img = block(img, vec=vec, pe=None)
            if control is not None and i < len(control.get("output", [])) and control["output"][i] is not None:
                img[:, txt.shape[1]:txt.shape[1] + control["output"][i].shape[1]] += control["output"][i]
        return self.out(img[:, txt.shape[1]:])

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):
        """As Flux.forward in v0.3.64: the DIFFUSION_MODEL wrappers get every argument positionally, so with a
        ControlNet the `control` dict comes before transformer_options. x [B,C,H,W]; Kontext-style reference
        latents are appended after the image tokens. `pass_options=False` mimics forwards of other packs
        (TeaCache) that call the block patches without transformer_options."""
        wrappers = [w for ws in transformer_options.get("wrappers", {}).get("diffusion_model", {}).values() for w in ws]
        return _Executor(self._forward, self, wrappers)(x, timestep, context, y, guidance, ref_latents, control,
                                                        transformer_options, **kwargs)

    def _forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                 transformer_options={}, pass_options=True):
        b, c, h, w = x.shape
        tok = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        n = tok.shape[1]
        if ref_latents is not None:
            for r in ref_latents:
                rt = r.reshape(b, c, r.shape[2] // 2, 2, r.shape[3] // 2, 2).permute(0, 2, 4, 1, 3, 5)
                tok = torch.cat([tok, rt.reshape(b, -1, c * 4)], 1)
        out = self.forward_orig(tok, context, timestep, control, transformer_options, pass_options)[:, :n]
        return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def apply_model(flux, x, sigma, context, control=None, transformer_options={}, **kwargs):
    """As BaseModel.apply_model in v0.3.64: the APPLY_MODEL wrappers, called positionally with
    (x, t, c_concat, c_crossattn, control, transformer_options), run outside the diffusion model (which
    TorchCompileModel replaces by its compiled version), then the diffusion model."""
    wrappers = [w for ws in transformer_options.get("wrappers", {}).get("apply_model", {}).values() for w in ws]

    def _apply_model(x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
        return flux(x, t, c_crossattn, control=control, transformer_options=transformer_options, **kw)

    base_model = types.SimpleNamespace(diffusion_model=flux)  # the executor's class_obj: ComfyUI's BaseModel
    return _Executor(_apply_model, base_model, wrappers)(x, sigma, None, context, control, transformer_options,
                                                         **kwargs)


class _Executor:
    """comfy.patcher_extension.WrapperExecutor's contract: calling it runs the next wrapper (given this executor's
    successor) or, after the last, `original`; `class_obj` is the object whose method is wrapped."""

    def __init__(self, original, class_obj, wrappers, index=0):
        self.original, self.class_obj, self.wrappers, self.index = original, class_obj, wrappers, index

    def __call__(self, *a, **k):
        if self.index == len(self.wrappers):
            return self.original(*a, **k)
        return self.wrappers[self.index](_Executor(self.original, self.class_obj, self.wrappers, self.index + 1), *a, **k)
