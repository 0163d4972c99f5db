"""HTTP routes on ComfyUI's server for identity files (headless clients on other machines):

  GET  /pulid_flux/identities  -> 200 {"identities": ["a.safetensors", ...]}
  POST /pulid_flux/identities  multipart: `file` (the .safetensors, or a card: the file it carries), optional `name`,
       optional `overwrite`
       -> 200 {"name", "bytes"}; 400 not an identity / bad name / malformed body; 409 exists; 413 over 16 MB.

The upload handling (limits, checks, the atomic write) is pulid_flux/identity_upload.py; this only registers it."""
from __future__ import annotations

import sys

from .folders import identity_files, save_folder
from ..pulid_flux.identity_upload import handle_upload

ROUTE = "/pulid_flux/identities"


def register_routes() -> bool:
    """Add the routes to a running ComfyUI server (PromptServer.instance); nothing when there is none (tests that
    import the pack as a library, the CLI)."""
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    if prompt_server is None:
        return False
    from aiohttp import web

    routes = prompt_server.routes

    @routes.get(ROUTE)
    async def list_identities(request):
        return web.json_response({"identities": sorted(identity_files())})

    @routes.post(ROUTE)
    async def upload_identity(request):
        return await handle_upload(request, save_folder())

    return True
