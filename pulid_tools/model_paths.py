"""The model folders a ComfyUI install searches, worked out without importing ComfyUI.

Mirrors ComfyUI v0.3.x: its built-in defaults under <base>/models, then extra_model_paths.yaml sections
(appended, or put first with `is_default: true`), then the folders this pack registers when it loads
(models/pulid, models/insightface, models/facexlib, appended after whatever the YAML registered)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

# ComfyUI's own folder names and their default sub-folders of models/ (folder_paths.py).
CORE_DEFAULTS = {
    "diffusion_models": ("unet", "diffusion_models"),
    "text_encoders": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
    "vae": ("vae",),
    "checkpoints": ("checkpoints",),
}
PACK_DEFAULTS = {"pulid": "pulid", "insightface": "insightface", "facexlib": "facexlib",
                 "pulid_identities": "pulid/identities"}
LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}  # folder_paths.map_legacy
YAML_NAME = "extra_model_paths.yaml"


class ConfigError(ValueError):
    """An extra_model_paths.yaml that cannot be read, with the file and the reason."""


@dataclass
class ModelFolders:
    comfyui: str
    models_dir: str
    folders: dict[str, list[str]] = field(default_factory=dict)
    yaml_files: list[str] = field(default_factory=list)
    from_yaml: set[str] = field(default_factory=set)  # folders an extra_model_paths.yaml registered

    def get(self, name: str) -> list[str]:
        return list(self.folders.get(LEGACY_NAMES.get(name, name), []))

    def target(self, name: str) -> str:
        """The folder a fix should name for files of kind `name`: one ComfyUI reads, where the user keeps models.
        The user's extra_model_paths.yaml folder when it has one (an `is_default` one first, as ComfyUI orders
        them), else the one under the models folder ComfyUI uses (--base-directory / --models-directory)."""
        paths = self.get(name)
        chosen = [p for p in paths if p in self.from_yaml]
        if chosen:
            return chosen[0]
        inside = [p for p in paths if os.path.dirname(p) == self.models_dir]
        return inside[-1] if inside else (paths[0] if paths else os.path.join(self.models_dir, name))

    def add(self, name: str, path: str, first: bool = False) -> None:
        paths = self.folders.setdefault(LEGACY_NAMES.get(name, name), [])
        if path in paths:
            if first:
                paths.remove(path)
                paths.insert(0, path)
        elif first:
            paths.insert(0, path)
        else:
            paths.append(path)


def read_extra_model_paths(yaml_path: str) -> list[tuple[str, str, bool]]:
    """(folder name, absolute path, is_default) for every path in an extra_model_paths.yaml, in file order,
    resolved the way ComfyUI's utils/extra_config.py does."""
    try:
        import yaml  # PyYAML: a ComfyUI requirement (and of timm, which this pack needs)
    except ImportError as e:
        raise ConfigError(f"{yaml_path}: PyYAML is needed to read it (pip install pyyaml)") from e
    try:
        with open(yaml_path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{yaml_path}: cannot be read: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{yaml_path}: expected sections of 'folder: path' lines at the top level")
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    entries = []
    for section_name, section in config.items():
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{yaml_path}: section '{section_name}' is not a mapping of folder names to paths")
        section = dict(section)
        base = section.pop("base_path", None)
        if base is not None:
            base = os.path.expandvars(os.path.expanduser(str(base)))
            if not os.path.isabs(base):
                base = os.path.abspath(os.path.join(yaml_dir, base))
        is_default = bool(section.pop("is_default", False))
        for name, value in section.items():
            for line in str(value).split("\n"):
                line = line.strip()
                if not line:
                    continue
                path = os.path.join(base, line) if base else (
                    line if os.path.isabs(line) else os.path.join(yaml_dir, line))
                entries.append((str(name), os.path.normpath(path), is_default))
    return entries


def resolve(comfyui: str, base_directory: str | None = None, extra_configs=(), models_dir: str | None = None) -> ModelFolders:
    """Folders of a ComfyUI at `comfyui` (its root, where main.py and extra_model_paths.yaml are), started with
    `--base-directory` (models under it instead) and `--extra-model-paths-config` files if given; `models_dir`
    names the models folder directly (any name)."""
    comfyui = os.path.abspath(comfyui)
    models_dir = os.path.abspath(models_dir) if models_dir else os.path.join(os.path.abspath(base_directory or comfyui),
                                                                           "models")
    result = ModelFolders(comfyui, models_dir)
    for name, subdirs in CORE_DEFAULTS.items():
        for sub in subdirs:
            result.add(name, os.path.join(models_dir, sub))
    yaml_files = [os.path.join(comfyui, YAML_NAME)] if os.path.isfile(os.path.join(comfyui, YAML_NAME)) else []
    yaml_files += [os.path.abspath(p) for p in extra_configs]
    for yaml_path in yaml_files:
        if not os.path.isfile(yaml_path):
            raise ConfigError(f"{yaml_path}: file not found")
        for name, path, is_default in read_extra_model_paths(yaml_path):
            result.add(name, path, first=is_default)
            result.from_yaml.add(path)
    result.yaml_files = yaml_files
    for name, sub in PACK_DEFAULTS.items():  # comfy_support.register_model_folders: appended after the YAML's
        result.add(name, os.path.join(models_dir, *sub.split("/")))
    return result


def list_files(folder: str, extensions=None) -> list[str]:
    """Files under `folder` (recursive, like ComfyUI's lists), as sorted '/'-separated relative paths."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if extensions is None or os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(found)
