"""The GPU check of issue 27: `python -m bench.gpu` (README.md beside this file). Nothing here is imported by the pack."""
