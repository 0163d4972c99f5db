"""`python -m pulid_tools doctor`: are the model files where ComfyUI looks, and do they load (command, checks), with
the catalog of every model file the pack and its workflows use."""
