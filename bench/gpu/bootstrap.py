"""What the GPU check does before it imports ComfyUI: find the carried folder (bench/gpu/carry/, made by prepare.py),
install its wheels into a --target folder beside (never over) the installed packages, put the carried ComfyUI first
on sys.path, and record which third-party modules ComfyUI, the pack and the carried packages import, so a module the
GPU image lacks is named here on the CPU instead of costing a GPU run."""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CARRY = os.path.join(HERE, "carry")
CARRY_COMFYUI = os.path.join(CARRY, "comfyui")
CARRY_WHEELS = os.path.join(CARRY, "wheels")
MANIFEST = os.path.join(CARRY, "manifest.json")
LIMIT_BYTES = 64 * 1024 * 1024  # what one device call carries: tracked files + carried folders
PACK_NAME = "comfyui_pulid_flux_gpu_check"

# The device image's Python packages as KINDS.md lists them (read off a machine on 2026-11-17).
GPU_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize huggingface-hub hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split()
# distribution -> import names where they differ from the name with '-' -> '_'
_IMPORT_NAMES = {
    "absl-py": ["absl"], "attrs": ["attr", "attrs"], "cuda-bindings": ["cuda"], "cuda-core": ["cuda"],
    "cuda-pathfinder": ["cuda"], "cupy-cuda13x": ["cupy"], "markdown-it-py": ["markdown_it"],
    "nvidia-ml-py": ["pynvml"], "opencv-python-headless": ["cv2"], "pillow": ["PIL"], "protobuf": ["google"],
    "py-cpuinfo": ["cpuinfo"], "python-dateutil": ["dateutil"], "pyyaml": ["yaml"], "scikit-image": ["skimage"],
    "scikit-learn": ["sklearn"], "torch": ["torch", "torchgen", "functorch"], "jax-cuda13-pjrt": ["jax_plugins"],
    "jax-cuda13-plugin": ["jax_plugins"],
}
def gpu_image_modules() -> set[str]:
    names = set()
    for dist in GPU_IMAGE_PACKAGES:
        names.update(_IMPORT_NAMES.get(dist, [dist.replace("-", "_")]))
        if dist.startswith("nvidia-"):
            names.add("nvidia")
    return names


class ImportRecorder:
    """A sys.meta_path entry that finds nothing and notes, for every top-level module imported for the first time,
    the file whose code imported it. Only imports made by code under `roots` count: what an installed library
    imports is that library's business (a newer huggingface_hub here needs httpx2; the image's own does not)."""

    def __init__(self, roots: list[str]):
        self.roots = [os.path.abspath(r) + os.sep for r in roots]
        self.seen: dict[str, str] = {}

    def find_spec(self, fullname, path=None, target=None):
        if "." in fullname or fullname in sys.stdlib_module_names or fullname in self.seen:
            return None
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                     or os.sep + "importlib" + os.sep in frame.f_code.co_filename):
            frame = frame.f_back
        where = os.path.abspath(frame.f_code.co_filename) if frame is not None else ""
        if any(where.startswith(r) for r in self.roots):
            self.seen[fullname] = where
        return None

    def add_root(self, root: str) -> None:
        self.roots.append(os.path.abspath(root) + os.sep)

    def missing_on_gpu(self, provided: set[str], comfy_dir: str) -> dict[str, str]:
        """{module: importing file} for each module imported here that neither the GPU image, the carried wheels,
        the repository nor the ComfyUI code provides (one whose import failed here is skipped: its importer copes)."""
        ok = gpu_image_modules() | provided
        local = (REPO_ROOT + os.sep, os.path.abspath(comfy_dir) + os.sep)
        missing = {}
        for name, where in sorted(self.seen.items()):
            module = sys.modules.get(name)
            if module is None or name in ok:
                continue
            places = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", []) or [])]
            if any(os.path.abspath(p).startswith(local) for p in places if p):
                continue  # this repository (the pack, bench, tests/support, the carried ComfyUI) or ComfyUI
            missing[name] = where
        return missing


def start_recording() -> ImportRecorder:
    recorder = ImportRecorder([REPO_ROOT])
    sys.meta_path.insert(0, recorder)
    return recorder


def read_manifest(carry: str = CARRY) -> dict:
    path = os.path.join(carry, "manifest.json")
    if not os.path.isfile(path):
        raise SystemExit(f"No prepared folder at {carry}: run `python bench/gpu/prepare.py` first (it copies the "
                         f"ComfyUI code and the wheels the check needs there).")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def wheel_top_levels(path: str) -> set[str]:
    """Top-level import names a wheel installs (from its file list)."""
    import zipfile

    names = set()
    with zipfile.ZipFile(path) as wheel:
        for entry in wheel.namelist():
            top = entry.split("/", 1)[0]
            if not top.endswith((".dist-info", ".data")):
                names.add(top.split(".", 1)[0])
    return names


def installable(path: str) -> bool:
    """Whether this interpreter can install the wheel (the carry is for the GPU's CPython 3.12: a cp312-only wheel
    is left out on another Python, whose own environment must then have the package)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    return bool(set(parse_wheel_filename(os.path.basename(path))[3]) & set(sys_tags()))


def install_wheels(wheels_dir: str = CARRY_WHEELS, target: str | None = None) -> tuple[str | None, set[str], list[str]]:
    """pip-install the carried wheels (no index, no dependencies) into a folder appended to sys.path, so an
    installed package always wins and the carry only fills gaps. The folder is reused while the wheels are the same.
    Returns (folder, top-level names the carried wheels provide, wheels left out as not for this Python)."""
    wheels = sorted(glob.glob(os.path.join(wheels_dir, "*.whl")))
    provided = set().union(*(wheel_top_levels(w) for w in wheels)) if wheels else set()
    usable = [w for w in wheels if installable(w)]
    left_out = [os.path.basename(w) for w in wheels if w not in usable]
    if not usable:
        return None, provided, left_out
    stamp = hashlib.sha256("".join(f"{os.path.basename(w)}:{os.path.getsize(w)};" for w in usable).encode())
    target = target or os.path.join(tempfile.gettempdir(), f"pulid-gpu-site-{stamp.hexdigest()[:12]}")
    if not os.path.isfile(os.path.join(target, ".complete")):
        staging = tempfile.mkdtemp(prefix="pulid-gpu-site-", dir=os.path.dirname(os.path.abspath(target)))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--disable-pip-version-check", "--target", staging, *usable], check=True)
        open(os.path.join(staging, ".complete"), "w").close()
        try:
            os.replace(staging, target)
        except OSError:  # another run finished first: use its folder
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
    if target not in sys.path:
        sys.path.append(target)
    return target, provided, left_out


def import_comfyui(comfy_dir: str, cpu: bool):
    """ComfyUI's root first on sys.path (its `nodes`/`utils` win over this repository's), as a library."""
    comfy_dir = os.path.abspath(comfy_dir)
    if not os.path.isfile(os.path.join(comfy_dir, "comfy", "model_detection.py")):
        raise SystemExit(f"{comfy_dir} holds no ComfyUI code (comfy/model_detection.py): run "
                         f"`python bench/gpu/prepare.py` or pass --comfyui.")
    if sys.path[0] != comfy_dir:
        sys.path.insert(0, comfy_dir)
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu
    # ComfyUI's default on CUDA is PyTorch's attention; on the CPU it would pick its sub-quadratic one, which asks
    # psutil for free memory inside the forward (a graph break of its own): the toy runs the GPU's attention.
    comfy.cli_args.args.use_pytorch_cross_attention = cpu or comfy.cli_args.args.use_pytorch_cross_attention
    import comfy.model_management  # noqa: F401 - reads args.cpu
    return comfyui_version(comfy_dir)


def comfyui_version(comfy_dir: str) -> str:
    try:
        with open(os.path.join(comfy_dir, "comfyui_version.py"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "?"


def import_pack():
    """The repository as a package, the way ComfyUI imports a custom node folder (relative imports inside)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(REPO_ROOT, "__init__.py"),
                                                  submodule_search_locations=[REPO_ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return pack


def tracked_bytes() -> int:
    """Bytes of the repository's tracked files (what a device call sends besides the carried folders)."""
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1
    total = 0
    for name in out.decode().split("\0"):
        path = os.path.join(REPO_ROOT, name)
        if name and os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
    return total


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
               if not os.path.islink(os.path.join(d, f)))
