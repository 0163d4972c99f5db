"""`python -m pulid_tools queue`: one API graph on one ComfyUI server, headless (command)."""
