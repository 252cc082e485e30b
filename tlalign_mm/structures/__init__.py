"""The data records passed between the package's parts (mmpretrain's ``structures``).

* :class:`MixResult` (:mod:`~tlalign_mm.structures.mix_result`): what a batch mixer reports, the
  mixed images and each token's share of the partner image; built by :mod:`tlalign_mm.mixing`,
  read by the label rules and the analysis;
* :class:`ClsDataSample` (:mod:`~tlalign_mm.structures.cls_data_sample`): one image's annotation,
  an mmengine ``BaseDataElement``; built by the datasets' ``PackClsInputs``, read by the classifier.

They sit just above ``align`` in the import direction (docs/advanced_guides/design.md): every layer that passes
them on imports them from here, and none of them imports a layer above.
"""
from .cls_data_sample import ClsDataSample
from .mix_result import MIX_MODES, MixResult

__all__ = ['MixResult', 'MIX_MODES', 'ClsDataSample']
