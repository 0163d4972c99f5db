"""DIR/manifest.jsonl: one JSON record per finished job, appended, flushed and fsynced as the job ends,
after its images were written under a temporary name and renamed. A job counts as done when a record
with "status": "done" holds its key; failed jobs get a "failed" record (kept as history, run again on
the next run). --keep-best moves the less similar images to DIR/rejected/ (never deletes)."""
from __future__ import annotations

import json
import os
import sys

NAME = "manifest.jsonl"
REJECTED = "rejected"


class Manifest:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, NAME)
        self.done: dict[str, dict] = {}
        self.warnings: list[str] = []
        os.makedirs(folder, exist_ok=True)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # only a crash in the middle of a write leaves this, and only on the last line
                self.warnings.append(f"{self.path}:{n}: unreadable record skipped (its job runs again)")
                continue
            if record.get("status") == "done" and record.get("key"):
                self.done[record["key"]] = record
        if lines and lines[-1].strip():  # a cut last line: start the next record on a line of its own
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")

    def is_done(self, key: str) -> bool:
        return key in self.done

    def write_image(self, name: str, data: bytes) -> str:
        """Write DIR/name through a temporary name and a rename, so a file under its final name is whole."""
        final = os.path.join(self.folder, name)
        temp = final + ".part"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
        return name

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if record.get("status") == "done":
            self.done[record["key"]] = record

    def close(self) -> None:
        self._file.close()

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
                if os.path.exists(source) and not os.path.exists(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(source, target)
                kept, rejected = kept + keep, rejected + (not keep)
        return kept, rejected, unscored


def scores_of(entry: dict) -> list[float] | None:
    """The Face similarity node's per-image scores from a /history entry (first such node by id), if any."""
    outputs = entry.get("outputs") or {}
    for node_id in sorted(outputs, key=lambda k: (0, int(k)) if k.isdigit() else (1, k)):
        values = outputs[node_id].get("pulid_similarity")
        if isinstance(values, list):
            try:
                return [float(v) for v in values]
            except (TypeError, ValueError):
                print(f"warning: node {node_id}'s pulid_similarity is not a list of numbers", file=sys.stderr)
    return None


def output_images(entry: dict) -> list[dict]:
    """The saved images (type "output") of a /history entry, in node id order; previews are skipped."""
    outputs = entry.get("outputs") or {}
    return [image for node_id in sorted(outputs, key=lambda k: (0, int(k)) if k.isdigit() else (1, k))
            for image in outputs[node_id].get("images", []) if image.get("type", "output") == "output"]
