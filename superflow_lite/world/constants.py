"""The shapes world's image size, in a module without heavy imports: the renderer and the
reward use it and should not pay for importing diffusers."""
from __future__ import annotations

WORLD_RESOLUTION: int = 64
