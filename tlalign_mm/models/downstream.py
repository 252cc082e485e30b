"""Register the TL-Align backbones in the mmseg and mmdet ``MODELS`` registries.

This is the only module that imports mmseg / mmdet.  ``import tlalign_mm`` calls
:func:`register_downstream`, which registers into whichever of the two is installed, so a
downstream config needs only ``custom_imports = dict(imports=['tlalign_mm'])`` and then names
``type='TLAVisionTransformer'`` or ``type='TLASwinTransformer'`` in the ``mmseg`` / ``mmdet``
scope.  The names carry the ``TLA`` prefix so they never collide with mmseg's
``VisionTransformer`` / mmdet's ``SwinTransformer``.
"""
from __future__ import annotations

import importlib.util

from .backbones import TLASwinTransformer, TLAVisionTransformer

__all__ = ['register_downstream', 'BACKBONES']

BACKBONES = (TLAVisionTransformer, TLASwinTransformer)


def register_downstream() -> list[str]:
    """Register our backbones into mmseg's and mmdet's MODELS if those packages import.

    Returns:
        the scopes registered into (e.g. ``['mmseg', 'mmdet']``).  A package that is not
        installed is skipped; one that is installed but fails to import raises (a broken
        mmcv should be seen, not hidden).
    """
    done = []
    for scope, mod in (('mmseg', 'mmseg.registry'), ('mmdet', 'mmdet.registry')):
        if importlib.util.find_spec(scope) is None:
            continue
        registry = importlib.import_module(mod).MODELS
        for cls in BACKBONES:
            if registry.get(cls.__name__) is not cls:
                registry.register_module(module=cls, force=True)
        done.append(scope)
    return done
