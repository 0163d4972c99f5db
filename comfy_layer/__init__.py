"""Everything ComfyUI-specific besides the node declarations (nodes.py): model folders and file lists (folders),
the loaded models and their memory management (models), photos -> embedding with its cache (encoding), patching
a Flux model (patching), identities in ComfyUI (identities), the HTTP route (routes), and the node inputs several
nodes share (inputs). pulid_flux/ and encoders/ hold the maths and never import this."""
