"""Run by ComfyUI-Manager after `pip install -r requirements.txt` on every install and update (by hand:
`python install.py` in this folder, with ComfyUI's Python): leaves exactly one onnxruntime build installed, the GPU
one on a CUDA machine. See pulid_tools/onnxruntime_setup.py and README "GPU face analysis"."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pulid_tools.onnxruntime_setup import main

    sys.exit(main())
