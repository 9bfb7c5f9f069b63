"""ShapesWorld Pairs: the two-object world (attribute binding and leakage), its readers and model."""

from .world import (
    CELL_PAIRS,
    OBJECT_FACTORS,
    SHAPES,
    TEMPLATES,
    PairScene,
    caption,
    dataset,
    factor_key,
    mask,
    masks,
    random_caption,
    render,
    sample_pair,
    split_key,
    values_of,
    vocabulary,
)

__all__ = [
    "CELL_PAIRS", "OBJECT_FACTORS", "SHAPES", "TEMPLATES", "PairScene", "caption", "dataset", "factor_key", "mask",
    "masks", "random_caption", "render", "sample_pair", "split_key", "values_of", "vocabulary",
]
