import os
import sys

import pytest
import torch

# Deterministic, single-threaded-enough defaults for CPU tests.
torch.manual_seed(0)
os.environ.setdefault('OMP_NUM_THREADS', '2')
#: Under pytest-xdist (README's ``-n auto``) each worker gets its share of the cores, in-process and
#: in the processes it starts, so that the workers do not oversubscribe the machine.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: helper modules whose asserts pytest explains as it does the tests' own (``tests/resume/cluster_runs.py``)
pytest.register_assert_rewrite('cluster_runs')

#: The analysis tools' own modules (``_common``, ``curves``, ...) live next to the scripts in
#: tools/analysis/, which import them from their own folder; the tests import them from here.
TOOLS_ANALYSIS = os.path.join(REPO, 'tools', 'analysis')
if TOOLS_ANALYSIS not in sys.path:
    sys.path.insert(0, TOOLS_ANALYSIS)
#: ... and tools/ (``launch``, ``config_checks``, the ``demo_data`` package), next to the top-level
#: scripts that import them; appended, as ``tools/analysis/_common.py`` does, so that
#: ``tools/test.py`` never shadows the standard library's ``test`` package.
TOOLS = os.path.join(REPO, 'tools')
if TOOLS not in sys.path:
    sys.path.append(TOOLS)


@pytest.fixture
def repo_root():
    return REPO


def mm_unavailable_reason():
    """Why mmseg / mmdet / mmcv's compiled ops cannot be used here, or None when they can."""
    import importlib
    try:
        importlib.import_module('mmseg.models')
        importlib.import_module('mmdet.models')
        importlib.import_module('mmcv.ops').RoIAlign  # noqa: B018  (the compiled ops)
    except Exception as e:  # noqa: BLE001  (any failure means: not usable here)
        return f'{type(e).__name__}: {e}'
    return None


_MM_REASON = []


def pytest_runtest_setup(item):
    """Tests marked ``mm`` are skipped, with the reason, where mmseg / mmdet / mmcv ops are absent."""
    if item.get_closest_marker('mm') is None:
        return
    if not _MM_REASON:
        _MM_REASON.append(mm_unavailable_reason())
    if _MM_REASON[0]:
        pytest.skip(f'mmseg / mmdet / mmcv ops not importable: {_MM_REASON[0]}')


@pytest.fixture
def plain_backbone():
    """Registers, and returns the type name of, a backbone that cannot carry token labels: one
    convolution and a global mean, (B, 3, H, W) -> ((B, 8),).  It declares TLABackbone's contract
    with ``carries_labels = False``: 8 channels at reduction 1, no label blocks."""
    from tlalign_mm.models.backbones import FeatureInfo, TLABackbone
    from tlalign_mm.registry import MODELS

    @MODELS.register_module(name='PlainConvBackbone', force=True)
    class PlainConvBackbone(TLABackbone):
        carries_labels = False
        patch_size = 1

        def __init__(self, out_type='avg_featmap'):
            super().__init__()
            self.out_type = out_type
            self.conv = torch.nn.Conv2d(3, 8, 3)

        @property
        def feature_info(self):
            return [FeatureInfo(8, 1, 'conv')]

        def token_grid(self, img_hw):
            return tuple(img_hw)

        def _stage_blocks(self):
            return []

        def forward(self, x):
            return (self.conv(x).mean((2, 3)),)

    return 'PlainConvBackbone'


@pytest.fixture(autouse=True, scope='module')
def _default_scope_per_module():
    """A test module that builds a Runner leaves mmengine's current default scope behind (a process-wide
    ``DefaultScope`` instance), which would make the next module's registry lookups depend on the order
    the files run in; each module starts from the scopes that existed before it."""
    from mmengine.registry import DefaultScope
    before = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(before)


def pytest_collection_modifyitems(config, items):
    """The files that hold ``slow`` tests (the runs that train) come first, each in its place otherwise: under
    pytest-xdist (``-n auto``, ``--dist loadfile --no-loadscope-reorder``) the long units of work start first
    and the many short files fill in at the end, so that the workers finish together."""
    slow = {item.nodeid.split('::')[0] for item in items if item.get_closest_marker('slow') is not None}
    items.sort(key=lambda item: item.nodeid.split('::')[0] not in slow)
