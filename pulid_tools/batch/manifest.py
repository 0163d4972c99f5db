"""DIR/manifest.jsonl: one JSON record per finished job, appended, flushed and fsynced as the job ends,
after its images were written under a temporary name and renamed. A job counts as done when a record
with "status": "done" holds its key; failed jobs get a "failed" record (kept as history, run again on
the next run). --keep-best moves the less similar images to DIR/rejected/ (never deletes).

One reader (parse_manifest), total: a damaged line is skipped with a warning naming its line, and a done
record whose images are gone (deleted by hand) counts as not done, so a re-run makes exactly what is missing.
A folder that cannot be written raises OutputError, checked before the first job (check_output_folder).
One batch at a time per folder: the manifest is held under DIR/.pulid_batch.lock (an OS lock, released when the
batch ends or its process dies), so a second batch on the same --out stops before reading anything, rather
than running the same jobs again and interleaving records."""
from __future__ import annotations

import json
import math
import os
import sys
import uuid

from filelock import FileLock, Timeout

NAME = "manifest.jsonl"
LOCK = ".pulid_batch.lock"
REJECTED = "rejected"


class OutputError(Exception):
    """--out (or its manifest) cannot be created, read or written; the message names the path and the reason."""


_OWN_NAMES = {NAME, LOCK, REJECTED}  # lower case: a case-insensitive file system sees Manifest.JSONL as the manifest


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
            and "/" not in name and "\\" not in name and name.isprintable())


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record) -> str | None:
    """Why a parsed line is not a usable job record (None: it is). Only "done" records are used, so only
    their fields are checked: key, files (plain names in --out), scores, prompt."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    status = record.get("status")
    if status == "failed":
        return None
    if status != "done":
        return "no \"status\" of done or failed"
    if not isinstance(record.get("key"), str) or not record["key"]:
        return "no job key"
    files = record.get("files")
    if not isinstance(files, list) or not files or not all(_plain_name(f) for f in files):
        return "\"files\" is not a list of file names in the output folder"
    own = next((f for f in files if f.lower() in _OWN_NAMES), None)
    if own is not None:  # --keep-best would move it into rejected/ (and the next run redo everything)
        return f"\"files\" names {own}, the batch's own, not an image"
    scores = record.get("scores")
    if scores is not None and not (isinstance(scores, list) and all(_finite_number(x) for x in scores)):
        return "\"scores\" is not a list of numbers"
    if not isinstance(record.get("prompt", ""), str):
        return "\"prompt\" is not text"
    return None


def parse_manifest(data: bytes, where: str = NAME) -> tuple[dict[str, dict], list[str]]:
    """({key: record} of the done jobs, warnings) from a manifest's bytes. Total: a damaged line (not UTF-8,
    not JSON, not a job record) is skipped with a warning naming its line number; its job runs again.
    A later record of a key replaces an earlier one."""
    done, warnings = {}, []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        except (ValueError, RecursionError):  # not JSON, a number past int's digit limit, nesting too deep
            problem = "not a whole JSON record (cut short by a crash?)"
        else:
            problem = record_problem(record)
        if problem is not None:
            warnings.append(f"{where}:{n}: damaged record skipped ({problem}); its job runs again")
        elif record["status"] == "done":
            done[record["key"]] = record
    return done, warnings


def read_manifest(path: str) -> tuple[dict[str, dict], list[str]]:
    """parse_manifest of a file ({} when there is none); raises OutputError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}, []
    except OSError as e:
        raise OutputError(f"cannot read the manifest {path}: {os_reason(e)}") from None
    return parse_manifest(data, path)


def os_reason(error: OSError) -> str:
    """The OS's reason, worded for a path where a folder was expected (a regular file in the way names that file
    rather than '[Errno 17] File exists')."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        blocker = _file_in_the_way(error.filename)
        if blocker is not None and os.fspath(blocker) != os.fspath(error.filename):
            return f"{blocker} is a file, not a folder"
        return "a file of that name is in the way (not a folder)"
    return error.strerror or str(error)


def _file_in_the_way(path) -> str | None:
    """The first existing non-folder on the way to `path` (path itself included), if any."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    path = os.path.abspath(os.fsdecode(path))
    parts = []
    while os.path.dirname(path) != path:
        parts.append(path)
        path = os.path.dirname(path)
    return next((p for p in reversed(parts) if os.path.exists(p) and not os.path.isdir(p)), None)


def check_output_folder(folder: str, *subfolders: str, option: str | None = None) -> list[str]:
    """Create `folder` (and subfolders) if needed and write a file there, so an --out that cannot be used
    is reported before any work; returns the folders created (deepest last). Raises OutputError, whose message
    starts with `option` (default '--out FOLDER')."""
    created = []
    try:
        for path in [folder] + [os.path.join(folder, s) for s in subfolders]:
            missing, parent = [], os.path.abspath(path)
            while not os.path.exists(parent) and os.path.dirname(parent) != parent:
                missing.append(parent)
                parent = os.path.dirname(parent)
            os.makedirs(path, exist_ok=True)
            created += reversed(missing)
            probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}.tmp")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.remove(probe)
    except OSError as e:
        raise OutputError(f"{option or f'--out {folder}'}: cannot create or write {e.filename or folder}: "
                          f"{os_reason(e)}") from None
    return created


class Manifest:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, NAME)
        self._lock = FileLock(os.path.join(folder, LOCK))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise OutputError(f"--out {folder}: another batch is writing there now (it holds {self._lock.lock_file}); "
                              "wait for it to end, or give this batch another --out.") from None
        except OSError as e:
            raise OutputError(f"--out {folder}: cannot create the lock {self._lock.lock_file}: {os_reason(e)}") from None
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        self.done, self.warnings = read_manifest(self.path)
        self.missing: dict[str, list[str]] = {}  # key -> images of a done record no longer on disk
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.path.getsize(self.path) and not self._ends_with_newline():
                os.write(self._fd, b"\n")  # a cut last line: the next record starts on a line of its own
        except OSError as e:
            raise OutputError(f"--out {self.folder}: cannot write the manifest {self.path}: {os_reason(e)}") from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def is_done(self, key: str) -> bool:
        """A done record whose images are all still in the folder (or in rejected/); missing images are
        noted in self.missing and the job counts as not done."""
        record = self.done.get(key)
        if record is None:
            return False
        gone = [name for name in record["files"] if not (os.path.isfile(os.path.join(self.folder, name)) or
                                                         os.path.isfile(os.path.join(self.folder, REJECTED, name)))]
        if gone:
            self.missing[key] = gone
        return not gone

    def write_image(self, name: str, data: bytes) -> str:
        """Write DIR/name through a temporary name and a rename, so a file under its final name is whole.
        Raises OutputError (nothing left behind) when the folder cannot be written."""
        final = os.path.join(self.folder, name)
        temp = f"{final}.{uuid.uuid4().hex[:8]}.part"
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, final)
        except OSError as e:
            try:
                os.remove(temp)
            except OSError:
                pass
            raise OutputError(f"cannot write {final}: {os_reason(e)}") from None
        return name

    def append(self, record: dict) -> None:
        """One line, written with one write() and fsynced (no buffer that a later close could flush
        half); raises OutputError."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {os_reason(e)}") from None
        if written != len(line):
            raise OutputError(f"cannot write {self.path}: only {written} of {len(line)} bytes written (disk full?)")
        if record.get("status") == "done":
            self.done[record["key"]] = record

    def close(self) -> None:
        try:
            os.close(self._fd)
        finally:
            self._lock.release()

    def keep_best(self, best: int) -> tuple[int, int, int]:
        """Per prompt, keep the `best` images with the highest similarity in DIR and move the others to
        DIR/rejected/ (and back, when a later run keeps more). Returns (kept, rejected, unscored); images
        without a score are always kept."""
        groups: dict[str, list] = {}
        unscored = 0
        for record in self.done.values():
            scores = record.get("scores") or []
            for i, name in enumerate(record.get("files") or []):
                if not scores:
                    unscored += 1
                    continue
                groups.setdefault(record.get("prompt", ""), []).append((scores[i % len(scores)], name))
        kept = rejected = 0
        rejected_dir = os.path.join(self.folder, REJECTED)
        for images in groups.values():
            images.sort(key=lambda item: (-item[0], item[1]))
            for rank, (_, name) in enumerate(images):
                keep = rank < best
                here, there = os.path.join(self.folder, name), os.path.join(rejected_dir, name)
                source, target = (there, here) if keep else (here, there)
                if os.path.isfile(source) and not os.path.exists(target):  # images only, never a folder
                    try:
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        os.replace(source, target)
                    except OSError as e:
                        raise OutputError(f"--keep-best: cannot move {source} to {target}: "
                                          f"{os_reason(e)}") from None
                kept, rejected = kept + keep, rejected + (not keep)
        return kept, rejected, unscored


def scores_of(entry: dict) -> list[float] | None:
    """The Face similarity node's per-image scores from a /history entry (first such node by id), if any."""
    outputs = entry.get("outputs") or {}
    for node_id in sorted(outputs, key=lambda k: (0, int(k)) if k.isdigit() else (1, k)):
        values = outputs[node_id].get("pulid_similarity")
        if isinstance(values, list):
            try:
                scores = [float(v) for v in values]
                if all(math.isfinite(x) for x in scores):
                    return scores
            except (TypeError, ValueError):
                pass
            print(f"warning: node {node_id}'s pulid_similarity is not a list of finite numbers", file=sys.stderr)
    return None


def output_images(entry: dict) -> list[dict]:
    """The saved images (type "output") of a /history entry, in node id order; previews are skipped."""
    outputs = entry.get("outputs") or {}
    return [image for node_id in sorted(outputs, key=lambda k: (0, int(k)) if k.isdigit() else (1, k))
            for image in outputs[node_id].get("images", []) if image.get("type", "output") == "output"]
