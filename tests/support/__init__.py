"""Test support, not part of the product: the real-ComfyUI harness and servers, seeded model files in the real
formats (PuLID, Flux, encoders), stand-ins (a tiny Flux, an aiohttp ComfyUI), fixtures and dtype-derived
tolerances. Tests import it as `support` (pytest puts tests/ on sys.path); bench/ scripts add tests/ themselves."""
