"""Run a command and report the peak memory of its whole process tree (pytest plus the ComfyUI servers the tests
start): the sum of the resident set sizes of the command and all its descendants, sampled every 0.25 s.

  python .ci/peak_rss.py python -m pytest -q"""
import subprocess
import sys
import time

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # ended between listing and reading
            pass
    return total


def main() -> int:
    child = subprocess.Popen(sys.argv[1:])
    root, peak, peak_at, start = psutil.Process(child.pid), 0, 0.0, time.monotonic()
    while child.poll() is None:
        try:
            rss = tree_rss(root)
        except psutil.Error:
            rss = 0
        if rss > peak:
            peak, peak_at = rss, time.monotonic() - start
        time.sleep(0.25)
    print(f"peak RSS (process tree): {peak / 2**30:.1f} GiB at {peak_at:.0f} s; wall time "
          f"{time.monotonic() - start:.0f} s", flush=True)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
