"""Identity file names and the one writer of identity files (Save identity, the upload route and the CLI use both).

Names: the rule below, checked with re.fullmatch (a `$` would let a trailing newline through); anything else is
refused, never cleaned up. Writes: a temporary file unique to the call in the target folder, then an atomic rename
(overwrite) or an atomic link that fails when the name exists (no overwrite); nothing is left behind on failure."""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import unicodedata

EXTENSION = ".safetensors"
MAX_NAME_CHARS = 100
NAME_RULE = (f"1 to {MAX_NAME_CHARS} ASCII letters, digits, spaces and . _ - ( ) +, starting with a letter or digit "
             f"and not ending with a dot or space; no folders; not a Windows device name (CON, PRN, AUX, NUL, COM0-9, "
             f"LPT0-9); '{EXTENSION}' is added when missing")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._()+-]*[A-Za-z0-9_()+-])?")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", "conin$", "conout$", *(f"com{i}" for i in range(10)),
                    *(f"lpt{i}" for i in range(10))}
_OTHER_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".json", ".onnx", ".gguf", ".sft")


class IdentityNameError(ValueError):
    """An identity name that breaks the rule; the message gives the name, the reason and the rule."""


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'control character')}"


def _name_problem(raw: str, base: str) -> str | None:
    control = next((c for c in raw if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if control is not None:
        return f"it contains a control character ({_char_name(control)})"
    if not base:
        return "it is empty"
    if "/" in raw or "\\" in raw or ":" in raw or ".." in raw or os.path.isabs(raw):
        return "it is a path, not a plain file name (no '/', '\\', '..' or drive letters)"
    other = next((c for c in raw if not c.isascii()), None)
    if other is not None:
        return f"it contains '{other}' ({_char_name(other)}), which is not ASCII"
    if len(base) > MAX_NAME_CHARS:
        return f"it has {len(base)} characters, more than {MAX_NAME_CHARS}"
    if base.lower().endswith(_OTHER_EXTENSIONS):
        return f"identity files are {EXTENSION} only"
    if not _NAME.fullmatch(base):
        bad = next((c for c in base if not re.fullmatch(r"[A-Za-z0-9 ._()+-]", c)), None)
        return f"the character {bad!r} is not allowed" if bad else "it must start with a letter or digit and not " \
                                                                    "end with a dot or space"
    if base.split(".")[0].strip().lower() in _WINDOWS_DEVICES:
        return "it is a reserved device name on Windows"
    return None


def identity_file_name(name) -> str:
    """A user-given identity name -> 'NAME.safetensors', or IdentityNameError. Leading and trailing spaces are
    dropped; nothing else is changed."""
    raw = str(name).strip(" ")
    base = raw[:-len(EXTENSION)] if raw.lower().endswith(EXTENSION) else raw
    problem = _name_problem(raw, base)
    if problem:
        raise IdentityNameError(f"identity name {name!r} refused: {problem}. Rule: {NAME_RULE}. Example: 'alice' "
                                f"or 'alice{EXTENSION}'.")
    return base + EXTENSION


def exists_message(path: str) -> str:
    return (f"{os.path.basename(path)} already exists in {os.path.dirname(os.path.abspath(path))}; choose another "
            f"name or set overwrite to replace it.")


def write_file_atomically(data: bytes, path: str, overwrite: bool = False) -> str:
    """Write `data` to `path`. Readers see the old file or the whole new one, never a part. Without overwrite an
    existing file is kept (FileExistsError), also one that appears while writing. Safe against concurrent calls
    from any thread or process: each call writes its own temporary file."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(exists_message(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
    return path


class NotWritten(OSError):
    """write_files_together could not write `path` (nothing of the set is left behind); `error` is the OS's error."""

    def __init__(self, path: str, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), path)
        self.path, self.error = path, error


def write_files_together(files: list[tuple[bytes, str]], overwrite: bool = False) -> list[str]:
    """Write several files (data, path) as one: every file is first written whole under a temporary name in its own
    folder, and only then are they given their names; if naming one fails, the names given before are taken back
    (a replaced file gets its old content back). So either every file is written or none is, and the files that were
    there stay as they were. Raises NotWritten naming the file that failed."""
    targets = [os.path.abspath(os.fspath(path)) for _, path in files]
    staged: list[str] = []
    done: list[tuple[str, str | None]] = []  # (path, the backup of the file it replaced)
    path = targets[0] if targets else ""
    try:
        for (data, _), path in zip(files, targets):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not overwrite and os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, exists_message(path), path)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
            staged.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in zip(staged, targets):
            backup = None
            if overwrite and os.path.lexists(path):
                backup = f"{tmp}.old"  # the old content keeps a name until every file is in place
                try:
                    os.link(path, backup)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, backup)
            if overwrite:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
            done.append((path, backup))
    except OSError as e:
        for written, backup in reversed(done):
            try:
                if backup:
                    os.replace(backup, written)
                else:
                    os.remove(written)
            except OSError:
                pass
        raise NotWritten(path, e) from None
    finally:
        for tmp in staged:
            for leftover in (tmp, f"{tmp}.old"):
                try:
                    os.remove(leftover)
                except OSError:  # gone already: renamed into place or put back
                    pass
    return targets


def _link_new(tmp: str, path: str) -> None:
    """Give `tmp`'s content the name `path` only if no file has that name, atomically."""
    try:
        os.link(tmp, path)  # fails with FileExistsError when the name is taken, even by a file made meanwhile
        return
    except FileExistsError:
        raise FileExistsError(exists_message(path)) from None
    except OSError:  # a file system without hard links (FAT, some network shares): reserve the name, then replace
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise FileExistsError(exists_message(path)) from None
    os.replace(tmp, path)


def _upload_command(name: str, server: str, overwrite: bool = False) -> str:
    """The command that puts a local identity file on `server` under its own name (README: More GPUs and machines;
    `curl -F file=@NAME SERVER/pulid_flux/identities` does the same)."""
    return (f"`python -m pulid_tools queue GRAPH.json --identity {name} --keep-name"
            f"{' --overwrite' if overwrite else ''} --server {server}`")


def missing_identity_message(name: str, folders: list[str], server: str) -> str:
    """What a server that lacks an identity answers (Load identity's validation, shown in the UI's error dialog, so
    short): which identity, which server, and how to give it the file under the name the workflow uses."""
    target = folders[0] if folders else "models/pulid/identities"
    more = f" and {len(folders) - 1} more" if len(folders) > 1 else ""
    return (f"identity '{name}' is not on server {server} (looked in {target}{more}). Fix: put the file there under "
            f"this name ({_upload_command(name, server)}, with your workflow as GRAPH.json, or POST "
            f"/pulid_flux/identities); or use Load identity card (ComfyUI-Distributed copies cards to workers); or "
            f"share one pulid_identities folder (extra_model_paths.yaml). Then press R.")


def stale_identity_message(name: str, found: str, wanted: str, server: str) -> str:
    """What a server answers when its file of that name holds another identity than the workflow chose (the
    fingerprint Load identity carries): both fingerprints and the fix."""
    return (f"identity '{name}' on server {server} is not the one this workflow chose: fingerprint {found} here, "
            f"{wanted} in the workflow. Fix: upload yours over it ({_upload_command(name, server, overwrite=True)}); "
            f"or use Load identity card; or clear Load identity's fingerprint to use this server's file.")
