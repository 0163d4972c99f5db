"""install.py's rule: after requirements.txt (which drags in the CPU onnxruntime through insightface 2.1), exactly
one onnxruntime build stays installed, the GPU one on a CUDA machine, and a second run changes nothing. pip is a
stand-in that models the shared files, so no environment is created."""
import io
import os
import re

import pytest
from hypothesis import given, strategies as st

from pulid_tools import onnxruntime_setup as ort
from pulid_tools.onnxruntime_setup import CPU, GPU

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHERS = {"torch": "2.14.1", "insightface": "2.1", "numpy": "2.4.6"}


@pytest.mark.parametrize("builds, cuda, keep, uninstall, install, reinstall", [
    ([], False, CPU, (), True, False),                       # fresh CPU machine (CI)
    ([], True, GPU, (), True, False),
    ([CPU], False, CPU, (), False, False),                   # README install on a CPU machine: nothing to do
    ([CPU], True, GPU, (CPU,), True, False),                 # README install on a CUDA machine: swap
    ([GPU], True, GPU, (), False, False),                    # already right
    ([GPU], False, GPU, (), False, False),                   # the user's choice (it also runs on CPU)
    ([CPU, GPU], True, GPU, (CPU,), False, True),            # requirements.txt re-run beside the GPU build
    ([CPU, GPU], False, GPU, (CPU,), False, True),
    (["onnxruntime_directml", CPU], True, "onnxruntime-directml", (CPU,), False, True),  # the user's build stays
    ([CPU, GPU, "onnxruntime-openvino"], False, GPU, (CPU, "onnxruntime-openvino"), False, True),
])
def test_the_rule(builds, cuda, keep, uninstall, install, reinstall):
    installed = {**OTHERS, **{b: "1.32.0" for b in builds}}
    assert ort.plan(installed, cuda) == ort.Plan(keep, "1.32.0" if keep in {ort.canonical(b) for b in builds} else None,
                                                 uninstall, install, reinstall)


def test_an_explicit_choice_wins_and_a_typo_is_named():
    assert ort.plan({GPU: "1.32.0"}, True, wanted="onnxruntime") == ort.Plan(CPU, None, (GPU,), True, False)
    with pytest.raises(ValueError, match="PULID_FLUX_ONNXRUNTIME='onnxruntime-cuda' is not an onnxruntime build"):
        ort.plan({}, True, wanted="onnxruntime-cuda")


class FakePip:
    """Installed distributions, plus the builds whose files another build's uninstall deleted (shared import
    package): what pip does to the real environment, for the commands install.py runs."""

    def __init__(self, installed):
        self.installed, self.broken, self.commands = dict(installed), set(), []

    def __call__(self, command):
        self.commands.append(command)
        assert command[1:3] == ["-m", "pip"]
        action, *rest = command[3:]
        names = [a for a in rest if not a.startswith("-")]
        assert all(ort.canonical(re.split(r"[<>=]", n)[0]) in ort.BUILDS for n in names), command  # never torch
        for spec in names:
            name, _, version = re.split(r"(>=|==)", spec) if re.search(r"[<>=]", spec) else (spec, "", "")
            if action == "uninstall":
                del self.installed[name]
                self.broken |= {b for b in self.installed if b in ort.BUILDS}
            else:
                assert "--force-reinstall" in rest or name not in self.installed
                assert "--no-deps" in rest or "--force-reinstall" not in rest  # never reinstall dependencies
                self.installed[name] = version if "==" in spec else "1.32.0"
                self.broken.discard(name)
        self.broken &= set(self.installed)
        return type("Done", (), {"returncode": 0})()


def run_install(pip, cuda):
    out = io.StringIO()
    code = ort.main([], run=pip, installed=lambda: dict(pip.installed), cuda=lambda: cuda, out=out)
    return code, out.getvalue()


@given(builds=st.sets(st.sampled_from(ort.BUILDS)), cuda=st.booleans())
def test_install_twice_leaves_one_working_build_and_the_second_run_does_nothing(builds, cuda):
    pip = FakePip({**OTHERS, **{b: "1.31.0" for b in builds}})
    assert run_install(pip, cuda)[0] == 0
    left = [b for b in pip.installed if b in ort.BUILDS]
    assert len(left) == 1 and not pip.broken
    if cuda and not (builds - {CPU, GPU}):
        assert left == [GPU]
    if len(builds) == 1:
        assert left == list(builds) or (cuda and builds == {CPU})  # a lone build is kept, unless CPU on CUDA
    assert {k: v for k, v in pip.installed.items() if k not in ort.BUILDS} == OTHERS  # torch & co untouched
    first = list(pip.commands)
    code, out = run_install(pip, cuda)
    assert code == 0 and pip.commands == first and "nothing to do" in out


def test_manager_update_cycle_on_a_cuda_machine():
    """requirements.txt re-installs the CPU build beside the GPU one on every update; install.py (run after it)
    removes it and repairs the GPU build's files at the same version."""
    pip = FakePip({**OTHERS, GPU: "1.31.0"})
    pip.installed[CPU] = "1.32.0"  # what `pip install -r requirements.txt` does (insightface depends on it)
    code, out = run_install(pip, cuda=True)
    assert code == 0 and pip.installed[GPU] == "1.31.0" and CPU not in pip.installed and not pip.broken
    assert [c[3:] for c in pip.commands] == [["uninstall", "-y", CPU],
                                             ["install", "--force-reinstall", "--no-deps", f"{GPU}==1.31.0"]]
    assert "PuLID-Flux install: python -m pip uninstall -y onnxruntime" in out


def test_requirements_and_readme_match_the_rule():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    assert f"onnxruntime>={ort.MIN_VERSION}" in lines  # CI (CPU) gets a working build from requirements.txt alone
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "python -m pip install -r requirements.txt && python install.py" in readme
