"""The model index: ``model-index.yml`` -> ``configs/*/metafile.yml`` -> every leaf config, and back.

OpenMMLab's schema (the ``model-index`` package that ``mim`` reads): every leaf config is one
``Models`` entry named after its file, in a collection whose README exists; every entry's config
exists and builds (on the meta device: the architecture, not the weights).
"""
from __future__ import annotations

import glob
import os
import os.path as osp

import pytest
import torch
import yaml
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LEAF_CONFIGS = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*', '*.py'))
                      if '/_base_/' not in p)


def _metafiles() -> list[str]:
    with open(osp.join(REPO, 'model-index.yml')) as f:
        return yaml.safe_load(f)['Import']


def _entries() -> list[dict]:
    out = []
    for mf in _metafiles():
        with open(osp.join(REPO, mf)) as f:
            doc = yaml.safe_load(f)
        for m in doc['Models']:
            out.append(dict(m, _metafile=mf, _collections=[c['Name'] for c in doc['Collections']]))
    return out


def test_every_folder_has_a_metafile_and_a_readme():
    folders = sorted({osp.dirname(p) for p in LEAF_CONFIGS})
    assert sorted(osp.dirname(m) for m in _metafiles()) == folders
    for d in folders:
        assert osp.isfile(osp.join(REPO, d, 'README.md')), f'{d}/README.md missing'


def test_every_leaf_config_is_in_exactly_one_metafile_entry():
    configs = [e['Config'] for e in _entries()]
    assert len(configs) == len(set(configs)), 'a config is listed twice'
    missing = sorted(set(LEAF_CONFIGS) - set(configs))
    extra = sorted(set(configs) - set(LEAF_CONFIGS))
    assert not missing, f'leaf configs in no metafile (add them to configs/<folder>/metafile.yml): {missing}'
    assert not extra, f'metafile entries without a config file: {extra}'


def test_entries_follow_the_openmmlab_schema():
    for e in _entries():
        where = f"{e['_metafile']}: {e['Name']}"
        assert e['Name'] == osp.splitext(osp.basename(e['Config']))[0], where
        assert osp.dirname(e['Config']) == osp.dirname(e['_metafile']), where
        assert e['In Collection'] in e['_collections'], where
        md = e['Metadata']
        assert md['Training Data'] and md['Architecture'] and md['Batch Size'] > 0, where
        assert ('Epochs' in md) != ('Iterations' in md), where
        # no weights are released: an entry that claims Weights or Results must carry a real URL / metric
        assert 'Weights' not in e and 'Results' not in e, f'{where}: no trained weights exist yet'


def test_metadata_matches_the_config():
    """The metafile's schedule and batch are the config's (8 GPUs x 128 = 1024 for ``8xb128``)."""
    for e in _entries():
        cfg = Config.fromfile(osp.join(REPO, e['Config']))
        md, where = e['Metadata'], e['Name']
        gpus, per_gpu = e['Name'].split('xb')[0].rsplit('_', 1)[1], cfg.train_dataloader.batch_size
        assert md['Batch Size'] == int(gpus) * per_gpu, where
        assert md.get('Epochs') == cfg.train_cfg.get('max_epochs'), where
        assert md.get('Iterations') == cfg.train_cfg.get('max_iters'), where
        if 'label_rule' in cfg.model:
            assert md['Label Rule'] == cfg.model.label_rule.type, where


def test_model_index_loads_with_mim_schema():
    modelindex = pytest.importorskip('modelindex', reason='the model-index package (requirements/docs.txt)')
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        mi = modelindex.load('model-index.yml')
        mi.build_models_with_collections()          # entries inherit their collection's metadata, as mim does
        # OpenMMLab metafiles give README paths from the repository root (mmseg's, mmdet's); model-index's
        # checker resolves them from the metafile's folder, so that one message is checked here instead.
        errors = []
        for e in mi.collect_check_errors():
            rest = [m for m in e['errors'] if not (m.startswith('Path to README file ') and
                                                   osp.isfile(m[len('Path to README file '):].split(' is not')[0]))]
            if rest:
                errors.append((e['filepath'], e['type'], rest))
    finally:
        os.chdir(cwd)
    assert not errors, errors
    assert len(mi.models) == len(LEAF_CONFIGS)


def _registry(scope: str):
    if scope == 'mmseg':
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    elif scope == 'mmdet':
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    else:
        import tlalign_mm.models  # noqa: F401
        from tlalign_mm.registry import MODELS
    return MODELS


@pytest.mark.slow
@pytest.mark.mm
def test_every_entry_builds(tmp_path):
    from mmengine.registry import init_default_scope
    teachers = {}
    for e in _entries():
        cfg = Config.fromfile(osp.join(REPO, e['Config']))
        scope = cfg.get('default_scope', 'tlalign_mm')
        init_default_scope(scope)
        MODELS = _registry(scope)
        teacher = cfg.model.get('label_rule', {}).get('teacher') if 'label_rule' in cfg.model else None
        if teacher is not None:         # TokenMix: a checkpoint of its teacher config, written once here
            if teacher.config not in teachers:
                path = str(tmp_path / f'teacher{len(teachers)}.pth')
                init_default_scope('tlalign_mm')
                torch.save({'state_dict': _registry('tlalign_mm').build(
                    Config.fromfile(osp.join(REPO, teacher.config)).model).state_dict()}, path)
                teachers[teacher.config] = path
            teacher.checkpoint = teachers[teacher.config]
            model = MODELS.build(cfg.model)
        else:
            with torch.device('meta'):
                model = MODELS.build(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0, e['Name']
