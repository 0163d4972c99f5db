"""`python -m pulid_tools identity`: encode a person's identity file from photos with no ComfyUI running."""
