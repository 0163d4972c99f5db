"""HTTP routes on ComfyUI's server for identity files (headless clients on other machines):

  GET  /pulid_flux/identities  -> 200 {"identities": ["a.safetensors", ...]}
  GET  /pulid_flux/identities/fingerprint?name=NAME  -> 200 {"name", "fingerprint"}, with fingerprint null and an
       "error" when this server has no readable identity of that name (a lookup, not a failure: the frontend
       extension asks it for every Load identity it sees); 400 without a name
  POST /pulid_flux/identities  multipart: `file` (the .safetensors, or a card: the file it carries), optional `name`,
       optional `overwrite`
       -> 200 {"name", "bytes", "fingerprint"}; 400 not an identity / bad name / malformed body; 409 exists (with
       "fingerprint" of the upload and "existing_fingerprint" of the file there); 413 over 16 MB.

The upload handling (limits, checks, the atomic write) is pulid_flux/identity/upload.py; this only registers it."""
from __future__ import annotations

import asyncio
import sys

from .folders import identity_files, save_folder
from .identities import identity_file_fingerprint
from ..pulid_flux.identity.file import IdentityFileError
from ..pulid_flux.identity.upload import handle_upload

ROUTE = "/pulid_flux/identities"
FINGERPRINT_ROUTE = ROUTE + "/fingerprint"


def fingerprint_reply(name) -> tuple[int, dict]:
    """(status, JSON reply) of GET /pulid_flux/identities/fingerprint for the `name` query value: only names Load
    identity lists are looked up, so no path a client sends reaches the disk."""
    if not name:
        return 400, {"error": "send ?name=NAME, an identity file name as Load identity lists it"}
    missing = {"name": name[:200], "fingerprint": None, "error": f"identity {name[:200]!r} is not on this server"}
    if name not in identity_files():
        return 200, missing
    try:
        return 200, {"name": name, "fingerprint": identity_file_fingerprint(name)}
    except FileNotFoundError:  # removed since it was listed
        return 200, missing
    except (IdentityFileError, OSError) as e:  # not a readable identity: the file on the server
        return 200, {"name": name, "fingerprint": None, "error": str(e)}


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

    @routes.get(FINGERPRINT_ROUTE)
    async def identity_fingerprint(request):
        # reading the file (about 0.6 MB, once per version of it) stays off the server's event loop
        status, reply = await asyncio.get_running_loop().run_in_executor(None, fingerprint_reply,
                                                                         request.query.get("name"))
        return web.json_response(reply, status=status)

    @routes.post(ROUTE)
    async def upload_identity(request):
        return await handle_upload(request, save_folder())

    return True
