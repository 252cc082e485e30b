"""Robustness metrics: ImageNet-A/R class subsets, ImageNet-C corruption errors, pixel-space models.

The pieces ``tools/analysis/robustness.py`` puts together; each
follows the benchmark's published evaluation code:

* **ImageNet-A / ImageNet-R** (Hendrycks et al., CVPR 2021 / ICCV 2021) hold 200 of the 1000
  ImageNet classes.  A 1000-way classifier is scored with its logits restricted to those 200
  (``output[:, indices_in_1k]`` in hendrycks/natural-adv-examples ``eval.py`` and
  hendrycks/imagenet-r ``eval.py``).  The wnid lists ship with the package under
  ``tlalign_mm/evaluation/wnids/`` (see the README there): ``imagenet_1k.txt`` (the 1000 classes
  in the order of every public ImageNet checkpoint), ``imagenet_a.txt`` and ``imagenet_r.txt``.
* **ImageNet-C** (Hendrycks & Dietterich, ICLR 2019): 15 corruptions x 5 severities.  The
  corruption error of a model ``f`` is its top-1 error averaged over the severities,
  ``E_c = mean_s err(c, s)``; the mCE is ``mean_c E_c / E_c^AlexNet``, with AlexNet's errors as
  published (:data:`ALEXNET_ERRORS`, the values google-research/augmix ``imagenet.py`` takes from
  hendrycks/robustness).  Any other model's errors can stand in for AlexNet's (a relative mCE).
* **Adversarial attacks** work on images in [0, 1]; :class:`PixelSpaceClassifier` puts the
  model's normalisation inside the module so that torchattacks' FGSM / PGD / AutoAttack see
  pixel space.
"""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterable, Mapping, Sequence
from functools import cache

import torch
from torch import Tensor, nn

__all__ = ['IMAGENET_C_CORRUPTIONS', 'ALEXNET_ERRORS', 'WNID_LISTS', 'wnid_list_path', 'read_wnids',
           'check_class_folders', 'subset_indices', 'corruption_errors', 'mean_corruption_error',
           'PixelSpaceClassifier']

#: The 15 ImageNet-C test corruptions, grouped as in the paper (noise, blur, weather, digital).
IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'impulse_noise',
    'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness',
    'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')

#: AlexNet's ImageNet-C top-1 error per corruption, averaged over the 5 severities (fractions in
#: [0, 1]); the mCE denominators of Hendrycks & Dietterich (2019), as listed by
#: google-research/augmix ``imagenet.py`` (``ALEXNET_ERR``).
ALEXNET_ERRORS: dict[str, float] = dict(zip(IMAGENET_C_CORRUPTIONS, (
    0.886428, 0.894468, 0.922640,
    0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592,
    0.853204, 0.646056, 0.717840, 0.606500)))

#: Name -> (file under ``tlalign_mm/evaluation/wnids/``, where it comes from).
WNID_LISTS: dict[str, tuple[str, str]] = {
    'imagenet_1k': ('imagenet_1k.txt', 'the 1000 ImageNet-1k classes in label order '
                                       '(hendrycks/imagenet-r eval.py all_wnids)'),
    'imagenet_a': ('imagenet_a.txt', 'the 200 ImageNet-A classes (hendrycks/natural-adv-examples eval.py '
                                     'thousand_k_to_200)'),
    'imagenet_r': ('imagenet_r.txt', 'the 200 ImageNet-R classes (hendrycks/imagenet-r eval.py '
                                     'imagenet_r_wnids)'),
}


def wnid_list_path(name: str) -> str:
    """Path of the packaged wnid list ``name`` (a key of :data:`WNID_LISTS`).

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in WNID_LISTS:
        raise KeyError(f'unknown wnid list {name!r}; known: {", ".join(WNID_LISTS)}')
    return osp.join(osp.dirname(osp.abspath(__file__)), 'wnids', WNID_LISTS[name][0])


@cache
def read_wnids(name: str) -> tuple[str, ...]:
    """The wnids of the packaged list ``name``, in file order (= label order for ``imagenet_1k``;
    the 200-class lists are sorted, which is also their order inside the 1000)."""
    with open(wnid_list_path(name)) as f:
        return tuple(line.strip() for line in f if line.strip())


def _preview(names: Iterable[str], n: int = 8) -> str:
    names = list(names)
    head = ', '.join(names[:n])
    return head + (f', ... ({len(names)} in all)' if len(names) > n else '')


def check_class_folders(found: Iterable[str], expected: Sequence[str], expected_name: str,
                        where: str) -> None:
    """Raise unless every class folder ``found`` is one of the ``expected`` class names.

    Args:
        found: the class sub-folder names of a benchmark folder.
        expected: the class names the evaluation maps them to (a wnid list, or the model's classes).
        expected_name: what ``expected`` is, named in the error (e.g. the wnid list's path).
        where: the folder, named in the error.

    Raises:
        ValueError: some folders are not in ``expected`` (names them and ``expected_name``), or
            ``found`` is empty.
    """
    found = sorted(found)
    if not found:
        raise ValueError(f'{where}: no class folders found; expected sub-folders named after {expected_name}')
    allowed = set(expected)
    unknown = [f for f in found if f not in allowed]
    if unknown:
        raise ValueError(
            f'{where}: {len(unknown)} of {len(found)} class folders are not in {expected_name} '
            f'({len(expected)} classes: {_preview(expected, 4)}): {_preview(unknown)}. '
            'The folder holds another class list than the model was trained on; point the option '
            'at the right folder, or give the model\'s class list with --classes.')


def subset_indices(model_classes: Sequence[str], subset: Sequence[str], subset_name: str) -> Tensor:
    """Positions of the ``subset`` classes among the model's classes, for ``logits[:, idx]``.

    Args:
        model_classes: the model's K class names in label order.
        subset: the M classes a benchmark scores (e.g. the 200 ImageNet-A wnids).
        subset_name: named in the error (the wnid list's path).

    Returns:
        LongTensor (M,), values in [0, K).  ``logits[:, idx]`` (B, M) are the restricted logits, and
        a sample of ``subset[j]`` has label ``j`` among them.

    Raises:
        ValueError: some of ``subset`` are not among the model's classes (names the list).
    """
    pos = {c: i for i, c in enumerate(model_classes)}
    missing = [c for c in subset if c not in pos]
    if missing:
        raise ValueError(
            f'{len(missing)} of the {len(subset)} classes of {subset_name} are not among the model\'s '
            f'{len(model_classes)} classes ({_preview(model_classes, 4)}): {_preview(missing)}. '
            f'This benchmark needs an ImageNet-1k classifier whose classes are {wnid_list_path("imagenet_1k")}.')
    return torch.tensor([pos[c] for c in subset], dtype=torch.long)


def corruption_errors(accuracy: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Top-1 error per corruption, averaged over its severities (``E_c``, fractions in [0, 1]).

    Args:
        accuracy: ``{(corruption, severity): top-1 accuracy in [0, 1]}``.

    Returns:
        ``{corruption: mean_s (1 - accuracy)}`` in first-seen order.
    """
    per: dict[str, list[float]] = {}
    for (name, _sev), acc in accuracy.items():
        per.setdefault(name, []).append(1.0 - float(acc))
    return {name: sum(v) / len(v) for name, v in per.items()}


def mean_corruption_error(errors: Mapping[str, float],
                          reference: Mapping[str, float] | None = None) -> float:
    """mCE in percent: ``100 * mean_c errors[c] / reference[c]`` over the corruptions in ``errors``.

    Args:
        errors: ``E_c`` per corruption (fractions), from :func:`corruption_errors`.
        reference: the normaliser's ``E_c``; None gives the unnormalised mean error in percent.
            :data:`ALEXNET_ERRORS` gives the ImageNet-C paper's mCE.

    Raises:
        ValueError: ``errors`` is empty, or a corruption has no (or a zero) reference error.
    """
    if not errors:
        raise ValueError('no corruption errors to average')
    if reference is None:
        return 100.0 * sum(errors.values()) / len(errors)
    bad = [c for c in errors if not reference.get(c)]
    if bad:
        raise ValueError(f'the reference has no non-zero error for {", ".join(bad)}')
    return 100.0 * sum(errors[c] / reference[c] for c in errors) / len(errors)


class PixelSpaceClassifier(nn.Module):
    """A classifier that takes RGB images in [0, 1], for adversarial attacks (torchattacks' API).

    ``forward(x)``: x (B, 3, H, W) float in [0, 1] -> logits (B, K) (or (B, M) with ``indices``),
    computed as ``model((255 x - mean) / std, mode='tensor')`` with the mean / std (0..255 units)
    of the model's data preprocessor, so that gradients and the ε-ball live in pixel space.

    Args:
        model: a :class:`~tlalign_mm.models.TLAImageClassifier` (anything whose
            ``data_preprocessor`` has ``mean`` / ``std`` (3, 1, 1) buffers and whose
            ``forward(inputs, mode='tensor')`` returns logits).
        indices: optional class positions (:func:`subset_indices`) to restrict the logits to.
    """

    def __init__(self, model: nn.Module, indices: Tensor | None = None):
        super().__init__()
        self.model = model
        pre = model.data_preprocessor
        self.register_buffer('mean', pre.mean.detach().clone().float().view(1, -1, 1, 1), False)
        self.register_buffer('std', pre.std.detach().clone().float().view(1, -1, 1, 1), False)
        self.register_buffer('indices', None if indices is None else indices.clone(), False)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model((x * 255.0 - self.mean) / self.std, mode='tensor')
        return logits if self.indices is None else logits[:, self.indices]
