"""A small stand-in for ComfyUI's Flux that follows its documented block-replace protocol
(comfy/ldm/flux/model.py v0.3.64: forward_orig, patches_replace["dit"], DIFFUSION_MODEL wrapper), so the
patch objects can be driven in CI without ComfyUI."""
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

    def forward_orig(self, img, txt, timesteps, transformer_options={}, pass_options=True):
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
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            if ("single_block", i) in replace:
                def wrap(args, block=block):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"])}
                img = replace[("single_block", i)]({"img": img, "vec": vec, "pe": None, "attn_mask": None, **opts},
                                                   {"original_block": wrap})["img"]
            else:
                img = block(img, vec=vec, pe=None)
        return self.out(img[:, txt.shape[1]:])

    def forward(self, x, timestep, context, ref_latents=None, transformer_options={}, pass_options=True):
        """x [B,C,H,W] latent; Kontext-style reference latents are appended after the image tokens."""
        wrappers = [w for ws in transformer_options.get("wrappers", {}).get("diffusion_model", {}).values() for w in ws]

        def run(x, timestep, context, ref_latents, transformer_options):
            b, c, h, w = x.shape
            tok = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
            n = tok.shape[1]
            if ref_latents is not None:
                for r in ref_latents:
                    rt = r.reshape(b, c, r.shape[2] // 2, 2, r.shape[3] // 2, 2).permute(0, 2, 4, 1, 3, 5)
                    tok = torch.cat([tok, rt.reshape(b, -1, c * 4)], 1)
            out = self.forward_orig(tok, context, timestep, transformer_options, pass_options)[:, :n]
            return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

        call = run
        for wrapper in reversed(wrappers):
            call = (lambda wr, inner: (lambda *a, **k: wr(_Executor(inner), *a, **k)))(wrapper, call)
        return call(x, timestep, context, ref_latents, transformer_options=transformer_options)


class _Executor:
    def __init__(self, fn, class_obj=None):
        self.fn, self.class_obj = fn, class_obj

    def __call__(self, *a, **k):
        return self.fn(*a, **k)
