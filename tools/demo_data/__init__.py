"""The demo-set builders behind ``tools/prepare_demo_data.py``: one module a data set.

* :mod:`.common`: errors, file helpers, the pinned-archive fetch (:func:`~.common.fetch_archive`),
  the :class:`~.common.DemoSet` base class and the ``.complete`` marker logic
  (:func:`~.common.ensure_set`);
* :mod:`.labelme`: the pinned labelme 6.3.1 source archive (source of ``voc_seg`` and ``coco_voc``);
* :mod:`.fashion_mnist`, :mod:`.voc_seg`, :mod:`.coco_voc`, :mod:`.fashion_mnist_c`: one set each
  (``fashion_mnist_c``, the corrupted copies for the robustness demo, is built only when asked for).

:data:`SETS` lists the sets in build order, :data:`GROUPS` the names ``--only`` accepts for them.
"""
from .coco_voc import CocoVocSet
from .fashion_mnist import FashionMnistSet
from .fashion_mnist_c import FashionMnistCSet
from .voc_seg import VocSegSet

SETS = (FashionMnistSet(), VocSegSet(), CocoVocSet(), FashionMnistCSet())
GROUPS = {'cls': ('fashion_mnist',), 'seg': ('voc_seg',), 'coco': ('coco_voc',), 'robust': ('fashion_mnist_c',)}

__all__ = ['GROUPS', 'SETS', 'CocoVocSet', 'FashionMnistCSet', 'FashionMnistSet', 'VocSegSet']
