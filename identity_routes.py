"""HTTP routes on ComfyUI's server for identity files (headless clients on other machines):

  GET  /pulid_flux/identities  -> 200 {"identities": ["a.safetensors", ...]}
  POST /pulid_flux/identities  multipart: `file` (the .safetensors), optional `name`, optional `overwrite`
       -> 200 {"name", "bytes"}; 400 not an identity / bad name; 409 exists; 413 over 16 MB.

The upload is read in chunks up to the cap, validated as an identity safetensors in memory (never unpickled),
and only then written (atomically) into the first identities folder."""
from __future__ import annotations

import logging
import os
import sys

from . import identity_support as ids
from .pulid_flux.identity import MAX_FILE_BYTES, IdentityFileError, read_identity_bytes, sanitise_name, write_file_bytes

log = logging.getLogger("PuLID-Flux")
ROUTE = "/pulid_flux/identities"
MULTIPART_SLACK = 64 * 1024  # form boundaries and the small text fields around the file


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _truthy(value: str | None) -> bool:
    if value is None or value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    raise UploadError(400, f"overwrite must be true or false, got {value!r}")


def store_upload(data: bytes, file_name: str | None, name: str | None, overwrite: bool, folder: str) -> dict:
    """Validate an uploaded identity and write it; raises UploadError(status, message)."""
    if len(data) > MAX_FILE_BYTES:
        raise UploadError(413, f"identity upload refused: {len(data):,} bytes, over the {MAX_FILE_BYTES // 2**20} MB "
                               f"limit (an identity is well under 1 MB).")
    chosen = name if name not in (None, "") else file_name
    try:
        target = sanitise_name(chosen or "")
    except ValueError as e:
        raise UploadError(400, str(e)) from None
    try:
        read_identity_bytes(data, target)
    except IdentityFileError as e:
        raise UploadError(400, f"not a PuLID-Flux identity: {e}") from None
    path = os.path.join(folder, target)
    try:
        write_file_bytes(data, path, overwrite)
    except FileExistsError as e:
        raise UploadError(409, f"{e} (send overwrite=true to replace it)") from None
    log.info("PuLID-Flux: identity uploaded to %s (%d bytes)", path, len(data))
    return {"name": target, "bytes": len(data)}


async def _read_upload(request) -> tuple[bytes, str | None, str | None, str | None]:
    if request.content_length is not None and request.content_length > MAX_FILE_BYTES + MULTIPART_SLACK:
        raise UploadError(413, f"identity upload refused: {request.content_length:,} bytes, over the "
                               f"{MAX_FILE_BYTES // 2**20} MB limit (an identity is well under 1 MB).")
    try:
        reader = await request.multipart()
    except Exception:  # noqa: BLE001 - aiohttp raises several types for a non-multipart body
        raise UploadError(400, "send multipart/form-data with a 'file' field holding the identity .safetensors")
    data, file_name, name, overwrite = None, None, None, None
    while True:
        part = await reader.next()
        if part is None:
            break
        if part.name == "file":
            file_name = part.filename
            chunks, size = [], 0
            while True:
                chunk = await part.read_chunk(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise UploadError(413, f"identity upload refused: over the {MAX_FILE_BYTES // 2**20} MB limit "
                                           f"(an identity is well under 1 MB).")
                chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name in ("name", "overwrite"):
            value = (await part.read(decode=True)).decode("utf-8", "replace")[:1000]
            name, overwrite = (value, overwrite) if part.name == "name" else (name, value)
        else:
            await part.release()
    if data is None:
        raise UploadError(400, "no 'file' field: send the identity .safetensors as multipart field 'file'")
    return data, file_name, name, overwrite


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
        return web.json_response({"identities": sorted(ids.identity_files())})

    @routes.post(ROUTE)
    async def upload_identity(request):
        try:
            data, file_name, name, overwrite = await _read_upload(request)
            result = store_upload(data, file_name, name, _truthy(overwrite), ids.save_folder())
        except UploadError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        return web.json_response(result)

    return True
