"""The HTTP client every command shares: one ComfyUI server's API (api), a prompt's life on its websocket
(websocket), and API-format graphs filled for a run (graph)."""
