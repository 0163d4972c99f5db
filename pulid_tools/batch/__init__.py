"""`python -m pulid_tools batch`: many images of one person over several ComfyUI servers, resumable: the command,
its async runner, the jobs (prompts x seeds) and the manifest of finished jobs."""
