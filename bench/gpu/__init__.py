"""The GPU check of issue 27: `python -m bench.gpu` (README.md beside this file). The pack imports nothing here."""
