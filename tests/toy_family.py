"""A toy model family, registered from this one file: an SD3-style transformer under its own class name.

It proves that nothing outside `explore.pipeline.families` needs to know a family by name: the toy
runs the shared behaviour suite (`tests/test_families.py`) through its adapter alone.
"""

from diffusers import SD3Transformer2DModel

from explore.pipeline.families.sd3 import SD3


class ToyTransformer(SD3Transformer2DModel):
    """An MM-DiT the registry has never heard of (same maths as SD3's)."""


class Toy(SD3):
    name = "toy"
    transformer_classes = ("ToyTransformer",)
    default_sampler = {"steps": 4, "guidance": 3.0}

    def transformer_class(self):
        return ToyTransformer
