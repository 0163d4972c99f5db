"""Command-line tools for ComfyUI-PuLID-Flux, run from the pack's folder:

    python -m pulid_tools queue GRAPH.json --face photo.jpg --prompt "..."   # headless client
    python -m pulid_tools doctor --comfyui /path/to/ComfyUI [--face photo.jpg]

`queue` uses only the Python standard library, so it runs from any Python 3.10+, also on a machine without
ComfyUI. `doctor` loads the pack's encoders and needs the Python environment ComfyUI runs in."""
