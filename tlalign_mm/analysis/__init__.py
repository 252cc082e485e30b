"""Analysis of TL-Align: tracing the labels through a model and measuring what they do.

* :mod:`~tlalign_mm.analysis.tracing`: forward hooks that record the label embedding after
  every block (ViT ``blocks[i]``, Swin ``layers[s].blocks[j]``, PVT ``block{s}[j]``);
* :mod:`~tlalign_mm.analysis.fluctuation`: :func:`aligned_targets` (the area and TL-Align targets
  of a mixed batch, whatever rule the model trains with), target L2 between the plain mixed target and the aligned
  target, lam vs aligned lam, per-block drift, the drift under autocast
  (``tools/analysis/token_fluctuation.py``);
* :mod:`~tlalign_mm.analysis.label_maps`: share-of-A maps on the token grid
  (``tools/analysis/visualize_aligned_labels.py``);
* :mod:`~tlalign_mm.analysis.rule_lambdas`: the share of A each label rule reads, block by block
  (``tools/analysis/rule_lambdas.py``);
* :mod:`~tlalign_mm.analysis.precision`: how structured a backbone's attention is, and how far
  autocast moves its aligned labels (``tools/analysis/gpu_check.py``).

Measurements only: the figures, CSV files, log reading, config and model building and benchmark
statistics of the tools live next to them in ``tools/analysis/`` (``plotting.py``, ``curves.py``,
``_common.py``, ``timing.py``).  Importing this package imports neither matplotlib nor mmengine's
config (``tests/test_layering.py``).
"""
from .fluctuation import (
                          BatchFluctuation,
                          FluctuationResult,
                          aligned_targets,
                          autocast_drift,
                          measure_batch,
                          measure_data_batch,
                          run_fluctuation,
)
from .label_maps import LabelMaps, compute_label_maps, denormalise
from .tracing import BlockRef, block_names, iter_blocks, parse_layer_spec, record_block_labels, source_share_readout

__all__ = ['aligned_targets', 'BatchFluctuation', 'FluctuationResult', 'measure_batch', 'measure_data_batch',
           'run_fluctuation', 'LabelMaps', 'compute_label_maps', 'denormalise', 'BlockRef', 'block_names',
           'iter_blocks', 'parse_layer_spec', 'record_block_labels', 'source_share_readout', 'autocast_drift']
