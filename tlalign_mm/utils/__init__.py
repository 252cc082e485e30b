"""Small helpers that are not part of the TL-Align method itself.

:func:`register_mmengine_safe_globals` makes mmengine 0.10.7 checkpoints (resume / ``load_from``)
loadable under torch >= 2.6's ``weights_only=True`` default by allow-listing exactly the types their
``meta`` holds; see :mod:`tlalign_mm.utils.torch_compat`.
"""
from .torch_compat import register_mmengine_safe_globals

__all__ = ['register_mmengine_safe_globals']
