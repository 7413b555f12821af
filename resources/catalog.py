"""Which model (id or local path, and revision) each pipeline uses, per profile."""

from __future__ import annotations

import dagster as dg


class ModelCatalog(dg.ConfigurableResource):
    """Model ids and default sampling settings of the active profile (`tiny` or `gpu`)."""

    profile: str = "tiny"
    image_model: str
    image_revision: str | None = None
    image_steps: int = 4
    tts_model: str
    tts_revision: str | None = None
    ambience_model: str
    ambience_revision: str | None = None
    ambience_steps: int = 8
    video_model: str
    video_revision: str | None = None
    video_steps: int = 4
    # Render size of the video model (delivery size is reached by resizing); 0 = model default.
    video_gen_width: int = 0
    video_gen_height: int = 0
