"""ComfyUI-PuLID-Flux: ComfyUI imports this folder as a package and reads the mappings below."""
import importlib.util

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
# Served at /extensions/<this folder>/: web/docs/<NodeClass>.md is the node's page in the frontend's help panel
# (web/docs/<NodeClass>/<locale>.md in other languages). ComfyUI reads locales/ by itself.
WEB_DIRECTORY = "./web"

# The torch core (pulid_flux/, encoders/) must stay importable without ComfyUI, e.g. in tests.
if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
    from .comfy_layer import routes

    routes.register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
