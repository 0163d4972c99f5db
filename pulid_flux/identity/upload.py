"""POST /pulid_flux/identities: read a multipart upload within fixed limits, check it with the identity reader and
write it with the identity writer. No ComfyUI imports (comfy_layer/routes.py registers it on ComfyUI's server), so it
is tested in process.

An identity card (PNG) is accepted as the identity file it carries, stored as NAME.safetensors; an empty file or a
picture that is no card (a JPEG copy of one) is refused saying what it is.

Whatever a client sends gets 200 or a 4xx with {"error": message}: 400 (not multipart, a field twice, a bad name,
not a valid identity, a body cut short or malformed), 409 (the name exists, overwrite not set; the reply also gives
both identities' fingerprints), 413 (over the limit, refused from Content-Length or a part's headers when they say
so, else as soon as the limit is passed: the body is never read further than the limit). Only a server-side failure
to write the file answers 5xx."""
from __future__ import annotations

import errno
import logging
import os

from .card import identity_file_in, is_png, looks_like_safetensors
from .file import MAX_FILE_BYTES, IdentityFileError, load_identity
from .store import IdentityNameError, identity_file_name, write_file_atomically

log = logging.getLogger("PuLID-Flux")
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the small text fields around the file
MAX_BODY_BYTES = MAX_FILE_BYTES + MULTIPART_SLACK
MAX_TEXT_FIELD_BYTES = 1024  # `name` (at most 100 characters) and `overwrite`
CHUNK = 64 * 1024
FIELDS = ("file", "name", "overwrite")
TOO_BIG = (f"identity upload refused: over the {MAX_FILE_BYTES // 2**20} MB limit (an identity is well under 1 MB); "
           f"send the .safetensors file that Save identity or `python -m pulid_tools identity` wrote.")


class UploadError(Exception):
    def __init__(self, status: int, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.details = status, details or {}


def parse_overwrite(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise UploadError(400, f"overwrite must be true or false, got {value[:40]!r}")


def _declared_length(headers) -> int | None:
    text = headers.get("Content-Length")
    return int(text) if text is not None and text.strip().isdigit() else None


async def read_upload(request, limit: int = MAX_BODY_BYTES) -> dict:
    """{'file': bytes, 'filename': str|None, 'name': str|None, 'overwrite': str|None}. Reads at most `limit` bytes
    of field content; raises UploadError."""
    from aiohttp import BodyPartReader

    if request.content_length is not None and request.content_length > limit:
        raise UploadError(413, f"{TOO_BIG} (Content-Length {request.content_length:,} bytes)")
    if not request.content_type.startswith("multipart/"):
        raise UploadError(400, "send multipart/form-data with a 'file' field holding the identity .safetensors "
                               f"(got Content-Type {request.content_type!r})")
    reader = await request.multipart()
    fields: dict = {}
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise UploadError(400, "nested multipart parts are not accepted: send plain form fields")
        declared = _declared_length(part.headers)
        if part.name == "file" and declared is not None and declared > MAX_FILE_BYTES:
            raise UploadError(413, f"{TOO_BIG} (the part's Content-Length is {declared:,} bytes)")
        if part.name in FIELDS and part.name in fields:
            raise UploadError(400, f"the field '{part.name}' is sent twice: send one {part.name}")
        part_limit = MAX_FILE_BYTES if part.name == "file" else MAX_TEXT_FIELD_BYTES
        chunks, size = [], 0
        while True:
            chunk = await part.read_chunk(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            total += len(chunk)
            if total > limit or (part.name == "file" and size > part_limit):
                raise UploadError(413, TOO_BIG)
            if part.name in FIELDS:
                if size > part_limit:
                    raise UploadError(400, f"the field '{part.name}' is longer than {part_limit} bytes")
                chunks.append(chunk)
        if part.name == "file":
            fields["file"], fields["filename"] = b"".join(chunks), part.filename
        elif part.name in FIELDS:
            try:
                fields[part.name] = b"".join(chunks).decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(400, f"the field '{part.name}' is not UTF-8 text") from None
    if "file" not in fields:
        raise UploadError(400, "no 'file' field: send the identity .safetensors as multipart field 'file'")
    return fields


def store_upload(data: bytes, file_name: str | None, name: str | None, overwrite: bool, folder: str) -> dict:
    """Check an uploaded identity and write it into `folder`; raises UploadError(status, message)."""
    if len(data) > MAX_FILE_BYTES:
        raise UploadError(413, f"{TOO_BIG} ({len(data):,} bytes)")
    chosen = name if name not in (None, "") else file_name
    if is_png(data) and (chosen or "").lower().endswith(".png"):
        chosen = chosen[:-len(".png")]  # a card named NAME.png gives NAME.safetensors
    try:
        target = identity_file_name(chosen or "")
    except IdentityNameError as e:
        raise UploadError(400, str(e)) from None
    shown = file_name if file_name and not looks_like_safetensors(data) else target  # a card, a JPEG: as sent
    try:  # a card is accepted as the identity file it carries; an empty file or a picture is named as such
        data, identity = identity_file_in(data, shown)
        fingerprint = identity.fingerprint
    except IdentityFileError as e:
        raise UploadError(400, f"not a PuLID-Flux identity: {e}") from None
    path = os.path.join(folder, target)
    try:
        write_file_atomically(data, path, overwrite)
    except FileExistsError as e:
        raise UploadError(409, f"{e} (send overwrite=true to replace it)",
                          {"fingerprint": fingerprint, "existing_fingerprint": _fingerprint_of(path)}) from None
    except OSError as e:  # the server's disk, not the client's request
        status = 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500
        log.error("PuLID-Flux: cannot write the uploaded identity %s: %s", path, e)
        raise UploadError(status, f"the server cannot write {target} into {folder}: {e.strerror or e}") from None
    log.info("PuLID-Flux: identity uploaded to %s (%d bytes)", path, len(data))
    return {"name": target, "bytes": len(data), "fingerprint": fingerprint}


def _fingerprint_of(path: str) -> str | None:
    """The fingerprint of the identity already in `path`, or None when it is no readable identity: a client told
    that the name exists can tell the same identity (nothing to do) from another one (overwrite or rename)."""
    try:
        return load_identity(path).fingerprint
    except (IdentityFileError, OSError):
        return None


async def handle_upload(request, folder: str):
    """The aiohttp handler body: always a JSON response, never an exception."""
    from aiohttp import web

    try:
        try:
            fields = await read_upload(request)
        except UploadError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here comes from the body the client sent
            log.info("PuLID-Flux: identity upload refused, unreadable body: %s: %s", type(e).__name__, e)
            raise UploadError(400, f"the upload is not well-formed multipart/form-data or was cut short "
                                   f"({type(e).__name__}: {str(e)[:200]})") from None
        result = store_upload(fields["file"], fields.get("filename"), fields.get("name"),
                              parse_overwrite(fields.get("overwrite")), folder)
    except UploadError as e:
        response = web.json_response({"error": str(e), **e.details}, status=e.status)
        if e.status == 413:
            response.force_close()  # the rest of the body is not read into memory; do not reuse the connection
        return response
    return web.json_response(result)
