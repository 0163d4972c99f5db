"""Time to re-run ApplyPulidFlux when only weight/start/end change (the embedding comes from the cache).

  COMFYUI_PATH=/path/to/ComfyUI python bench/reapply.py"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ComfyModels, machine  # noqa: E402


@torch.inference_mode()  # as ComfyUI runs nodes: IMAGE tensors are inference tensors
def main():
    env = ComfyModels()
    print(f"# reapply on {machine()}")
    print("| reference images | first apply s | re-apply, same IMAGE tensor (ComfyUI's cached output) ms | "
          "re-apply, equal content in a new tensor ms |")
    print("|---|---|---|---|")
    photo = env.harness.face_photo()  # 512x512
    big = torch.nn.functional.interpolate(photo.permute(0, 3, 1, 2), size=(1024, 1024)).permute(0, 2, 3, 1)
    for images in (big, big.repeat(4, 1, 1, 1)):
        t = time.perf_counter()
        env.apply(images)
        first = time.perf_counter() - t
        same, copied = [], []
        for i in range(20):
            for times, tensor in ((same, images), (copied, images.clone())):
                t = time.perf_counter()
                env.apply(tensor, weight=0.5 + i / 40, start_at=0.1, end_at=0.9)
                times.append(time.perf_counter() - t)
        print(f"| {images.shape[0]} x 1024² | {first:.2f} | {statistics.median(same) * 1000:.1f} | "
              f"{statistics.median(copied) * 1000:.1f} |")


if __name__ == "__main__":
    main()
