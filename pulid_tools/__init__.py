"""Command-line tools for ComfyUI-PuLID-Flux, run from the pack's folder:

    python -m pulid_tools queue GRAPH.json --face photo.jpg --prompt "..."   # headless client
    python -m pulid_tools batch GRAPH.json --server URL [--server URL ...] --face photo.jpg --prompts FILE \\
        --seeds 4 --out DIR                                                    # many images over many servers
    python -m pulid_tools doctor --comfyui /path/to/ComfyUI [--face photo.jpg]

`queue` and `batch` need only aiohttp and tqdm (both come with every ComfyUI install; elsewhere
`pip install aiohttp tqdm`), so they run from any Python 3.10+, also on a machine without ComfyUI.
`doctor` loads the pack's encoders and needs the Python environment ComfyUI runs in."""
