"""Block-sparse attention layouts, shared by the model (gpt3d.model) and the kernels (gpt3d.kernels), which must not
import each other's layer: the kernels sit below the model."""
from gpt3d.sparse.layout import check_layout, expand_layout_to_mask, layout_density, make_layout

__all__ = ["make_layout", "layout_density", "expand_layout_to_mask", "check_layout"]
