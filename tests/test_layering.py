"""The package's import direction (docs/advanced_guides/design.md): ``align`` <- ``structures`` <- ``mixing`` /
``datasets`` <- ``models`` <- the rest (``checkpoint``, ``analysis``, ``evaluation``, ``engine``; ``checkpoint``
below the other three), nothing under ``tlalign_mm/`` imports ``tools``, and ``analysis`` traces and measures only
(no matplotlib, CSV writers, mmengine configs or runners: the analysis tools' figures, files and builders live in
``tools/analysis/``).

Every ``import`` statement of every module is read with ``ast`` (function-level imports too, so a
lazy import cannot hide an edge), relative imports resolved against the module's package.  The models reach
the checkpoint loaders only by name, through tlalign_mm's ``FUNCTIONS`` registry (whose location is the
checkpoint package): :func:`test_models_name_only_registered_loaders` checks each name they look up.
"""
import ast
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, 'tlalign_mm')


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith('.py'):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
                yield path, rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _imports(path, module):
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=path)
    package = module if path.endswith('__init__.py') else module.rsplit('.', 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                name = '.'.join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((node.lineno, name))
    return out


ALL = list(_modules())


def test_the_walk_sees_the_package():
    names = {m for _, m in ALL}
    assert {'tlalign_mm.align.propagate', 'tlalign_mm.models.classifier', 'tlalign_mm.mixing.switch'} <= names


#: What analysis/ never imports: drawing, CSV writing, config loading and runners (the tools' part).
NOT_IN_ANALYSIS = ('matplotlib', 'csv', 'mmengine.config', 'mmengine.runner')


@pytest.mark.parametrize('path,module', ALL, ids=[m for _, m in ALL])
def test_import_direction(path, module):
    """align: only the standard library and torch; structures: + align; mixing: + structures; datasets:
    structures and the registry; nothing imports tools;
    models, mixing, datasets, align and utils never import the analysis / evaluation / engine layers nor the
    checkpoint package (which reads models: no cycle); checkpoint imports none of analysis / evaluation /
    engine; analysis imports none of :data:`NOT_IN_ANALYSIS`."""
    bad = _violations(_imports(path, module), module)
    assert not bad, f'{os.path.relpath(path, REPO)}:\n' + '\n'.join(bad)


def _violations(imports, module):
    bad = []
    for line, name in imports:
        top = name.split('.')[0]
        if top == 'tools':
            bad.append(f'{line}: {name} (tlalign_mm never imports tools/)')
        if module.startswith('tlalign_mm.align'):
            inside = name.startswith('tlalign_mm.align')
            if not (inside or top == 'torch' or top in sys.stdlib_module_names):
                bad.append(f'{line}: {name} (align/ imports only torch and the standard library)')
        if module.startswith('tlalign_mm.structures'):
            if name.startswith('tlalign_mm.') and not name.startswith(('tlalign_mm.align', 'tlalign_mm.structures')):
                bad.append(f'{line}: {name} (structures/ builds on align/ only)')
        if module.startswith('tlalign_mm.mixing'):
            if name.startswith('tlalign_mm.') and not name.startswith(
                    ('tlalign_mm.align', 'tlalign_mm.structures', 'tlalign_mm.mixing')):
                bad.append(f'{line}: {name} (mixing/ builds on align/ and structures/ only)')
        if module.startswith('tlalign_mm.datasets'):
            if name.startswith('tlalign_mm.') and not name.startswith(
                    ('tlalign_mm.align', 'tlalign_mm.structures', 'tlalign_mm.datasets', 'tlalign_mm.registry')):
                bad.append(f'{line}: {name} (datasets/ builds on structures/ and the registry only)')
        if module.startswith(('tlalign_mm.models', 'tlalign_mm.mixing', 'tlalign_mm.structures', 'tlalign_mm.align',
                              'tlalign_mm.datasets', 'tlalign_mm.utils')):
            for layer in ('analysis', 'evaluation', 'engine', 'checkpoint'):
                if name.startswith(f'tlalign_mm.{layer}'):
                    bad.append(f'{line}: {name} (the model layers do not import tlalign_mm.{layer})')
        if module.startswith('tlalign_mm.checkpoint'):
            for layer in ('analysis', 'evaluation', 'engine'):
                if name.startswith(f'tlalign_mm.{layer}'):
                    bad.append(f'{line}: {name} (checkpoint/ sits below tlalign_mm.{layer})')
        if module.startswith('tlalign_mm.analysis'):
            for other in NOT_IN_ANALYSIS:
                if name == other or name.startswith(other + '.'):
                    bad.append(f'{line}: {name} (analysis/ traces and measures; figures, files and builders '
                               'are in tools/analysis/)')
    return bad


def test_the_check_bites(tmp_path):
    """The reader resolves relative imports: a module of align importing ..models is caught."""
    f = tmp_path / 'x.py'
    f.write_text('from ..models import classifier\nimport tools.launch\n')
    found = [n for _, n in _imports(str(f), 'tlalign_mm.align.x')]
    assert found == ['tlalign_mm.models', 'tools.launch']


def test_the_analysis_rule_bites(tmp_path):
    """A lazy matplotlib import, a csv writer or a config load in analysis/ is caught; its own
    measurements' imports are not."""
    f = tmp_path / 'x.py'
    f.write_text('import csv\nfrom .tracing import iter_blocks\n\n\ndef draw():\n    import matplotlib.pyplot as plt\n'
                 '    from mmengine.config import Config\n')
    bad = _violations(_imports(str(f), 'tlalign_mm.analysis.x'), 'tlalign_mm.analysis.x')
    assert [b.split(' ')[1] for b in bad] == ['csv', 'matplotlib.pyplot', 'mmengine.config']
    assert _violations(_imports(str(f), 'tlalign_mm.evaluation.x'), 'tlalign_mm.evaluation.x') == []


def test_the_structures_rule_bites():
    """structures/ sits just above align/: a record that imported the mixers or the models is caught."""
    imports = [(1, 'tlalign_mm.align.token_labels'), (2, 'tlalign_mm.mixing'), (3, 'tlalign_mm.models.heads')]
    bad = _violations(imports, 'tlalign_mm.structures.x')
    assert [b.split(' ')[1] for b in bad] == ['tlalign_mm.mixing', 'tlalign_mm.models.heads']
    assert _violations([(1, 'tlalign_mm.structures')], 'tlalign_mm.mixing.x') == []


def test_the_datasets_rule_bites():
    """datasets/ (transforms, samplers) sits beside mixing/: one importing the models or the engine is caught,
    the data samples and the registry are not."""
    imports = [(1, 'tlalign_mm.structures'), (2, 'tlalign_mm.registry'), (3, 'tlalign_mm.models.heads'),
               (4, 'tlalign_mm.engine.loops')]
    bad = _violations(imports, 'tlalign_mm.datasets.transforms')
    assert [b.split(' ')[1] for b in bad] == ['tlalign_mm.models.heads', 'tlalign_mm.engine.loops',
                                              'tlalign_mm.engine.loops']


def test_the_checkpoint_rules_bite():
    """A model importing the checkpoint package, or the checkpoint package importing the engine, is caught;
    the checkpoint package reading the models is not."""
    assert _violations([(1, 'tlalign_mm.checkpoint.layouts')], 'tlalign_mm.models.backbones.base')
    assert _violations([(1, 'tlalign_mm.engine.hooks')], 'tlalign_mm.checkpoint.io')
    assert _violations([(1, 'tlalign_mm.models.backbones.pvt'), (2, 'tlalign_mm.registry')],
                       'tlalign_mm.checkpoint.pvt') == []


def test_models_name_only_registered_loaders():
    """Every ``FUNCTIONS.get('name')`` under ``models/`` names a function the checkpoint package registers
    (the registry imports it on the first lookup): the one way the models reach it."""
    import re

    from tlalign_mm.registry import FUNCTIONS
    names = set()
    for path, module in ALL:
        if module.startswith('tlalign_mm.models'):
            names |= set(re.findall(r"FUNCTIONS\.get\('(\w+)'\)", open(path, encoding='utf-8').read()))
    assert names == {'load_backbone_checkpoint', 'load_classifier_checkpoint', 'load_checkpoint_file'}
    for name in names:
        assert FUNCTIONS.get(name).__module__.startswith('tlalign_mm.checkpoint.'), name


# -- the backbone contract is read, never probed ----------------------------------------------------------
#: Names the package and the tools give a model or a backbone (and the family modules' ``MODEL`` class).
MODEL_NAMES = ('model', 'backbone', 'bb', 'MODEL')


def _probes(source: str, filename: str = '<src>') -> list[str]:
    """``hasattr(x, ...)`` / ``getattr(x, ...)`` calls whose object ``x`` is a model or a backbone (its last
    dotted name one of :data:`MODEL_NAMES`): what the contract (``TLABackbone``) declares is read directly."""
    out = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ('hasattr', 'getattr')
                and node.args and ast.unparse(node.args[0]).rsplit('.', 1)[-1] in MODEL_NAMES):
            out.append(f'{filename}:{node.lineno}: {ast.unparse(node)}')
    return out


def test_no_reader_probes_a_model_or_backbone():
    """Nothing under ``tlalign_mm/`` or ``tools/`` asks a model or backbone whether it has an attribute: the
    classifier, heads, loaders, export hook and tools read the declared contract."""
    files = [p for p, _ in ALL] + [os.path.join(root, f) for root, _, fs in os.walk(os.path.join(REPO, 'tools'))
                                   for f in fs if f.endswith('.py')]
    found = [hit for p in files for hit in _probes(open(p, encoding='utf-8').read(), os.path.relpath(p, REPO))]
    assert found == []


def test_the_probe_rule_bites():
    src = ("a = getattr(model, 'adapt_checkpoint', None)\nb = hasattr(self.backbone, 'pos_embed')\n"
           "c = getattr(family.MODEL, 'DEFAULTS', {})\nd = getattr(signal, 'SIGTERM')\ne = model.patch_size\n")
    assert [h.split(': ', 1)[1] for h in _probes(src)] == [
        "getattr(model, 'adapt_checkpoint', None)", "hasattr(self.backbone, 'pos_embed')",
        "getattr(family.MODEL, 'DEFAULTS', {})"]
