"""ShapesWorld: the embedded world, its readers and the trained model that ships with `explore`."""

from .world import (
    BACKGROUNDS,
    COLORS,
    FACTOR_KEYS,
    FACTORS,
    TEMPLATES,
    Scene,
    caption,
    dataset,
    mask,
    random_caption,
    render,
    sample_scene,
    vocabulary,
)

__all__ = [
    "BACKGROUNDS", "COLORS", "FACTOR_KEYS", "FACTORS", "TEMPLATES", "Scene", "caption", "dataset", "mask",
    "random_caption", "render", "sample_scene", "vocabulary",
]
