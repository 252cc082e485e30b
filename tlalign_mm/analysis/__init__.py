"""Analysis of TL-Align: token fluctuation and token-label maps.

* :mod:`~tlalign_mm.analysis.tracing`: forward hooks that record the label embedding after
  every block (ViT ``blocks[i]``, Swin ``layers[s].blocks[j]``, PVT ``block{s}[j]``);
* :mod:`~tlalign_mm.analysis.fluctuation`: :func:`aligned_targets` (the area and TL-Align targets
  of a mixed batch, whatever rule the model trains with), target L2 between the plain mixed target and the aligned
  target, lam vs aligned lam, per-block drift (``tools/analysis/token_fluctuation.py``);
* :mod:`~tlalign_mm.analysis.label_maps`: share-of-A maps on the token grid
  (``tools/analysis/visualize_aligned_labels.py``).

Importing this package does not import matplotlib; the plotting functions import it (Agg
backend) when called.
"""
from .fluctuation import (
                          BatchFluctuation,
                          FluctuationResult,
                          aligned_targets,
                          autocast_drift,
                          measure_batch,
                          measure_data_batch,
                          plot_fluctuation,
                          run_fluctuation,
                          write_fluctuation_csv,
)
from .label_maps import LabelMaps, compute_label_maps, denormalise, draw_display_mix, plot_label_maps
from .tracing import BlockRef, block_names, iter_blocks, parse_layer_spec, record_block_labels, source_share_readout

__all__ = ['aligned_targets', 'BatchFluctuation', 'FluctuationResult', 'measure_batch', 'measure_data_batch',
           'run_fluctuation', 'write_fluctuation_csv', 'plot_fluctuation', 'LabelMaps', 'compute_label_maps',
           'denormalise', 'draw_display_mix', 'plot_label_maps', 'BlockRef', 'block_names', 'iter_blocks',
           'parse_layer_spec', 'record_block_labels', 'source_share_readout', 'autocast_drift']
