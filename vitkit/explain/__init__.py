"""See what the model sees: attention maps, rollout, gradient-weighted relevance, cross-attention maps,
their pictures, and the pointing game that checks they land on the evidence."""
from .evidence import LocalisationSet, chance_rate, pasted_digits, pointing_hits, shape_scenes
from .methods import (
    METHODS,
    Explanation,
    cross_attention_maps,
    explain_classifier,
    fuse_heads,
    gradient_relevance,
    read_out,
    region_read_out,
    rollout,
    rollout_per_layer,
    self_attentions,
    to_grid,
)

__all__ = [
    "METHODS", "Explanation", "LocalisationSet", "chance_rate", "cross_attention_maps", "explain_classifier",
    "fuse_heads", "gradient_relevance", "pasted_digits", "pointing_hits", "read_out", "region_read_out", "rollout",
    "rollout_per_layer", "self_attentions", "shape_scenes", "to_grid",
]
