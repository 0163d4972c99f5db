"""Test support, not part of the product: seeded model files in the real formats, written where a test asks.

ComfyUI never imports this package; tests and bench/ scripts do (with the repo root on sys.path)."""
