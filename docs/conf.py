"""Sphinx configuration of the tlalign_mm docs (MyST Markdown + autodoc).

Build: ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``, then open
``docs/_build/html/index.html``.  The config READMEs are included from ``configs/``.
"""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

from tlalign_mm.version import __version__  # noqa: E402

project = 'tlalign_mm'
author = 'the tlalign_mm authors'
copyright = '2026, the tlalign_mm authors'
version = release = __version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_parser',
]
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
root_doc = 'index'
exclude_patterns = ['_build', 'results', 'images/README.md']

myst_enable_extensions = ['colon_fence', 'dollarmath', 'amsmath', 'deflist']
myst_heading_anchors = 3

# The API reference: docstrings are Google style with reST roles.
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_inherit_docstrings = False     # mmengine's / torch's docstrings cite their own internals
autodoc_default_options = {'members': True, 'show-inheritance': True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -n: every cross-reference must resolve.  Types of other libraries cannot (the build reaches no
# network, so no intersphinx): they are named here, and nothing of tlalign_mm is.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(torch|mmengine|mmcv|mmdet|mmseg|timm|numpy|np|PIL|torchvision|collections|typing|pathlib)(\..*)?'),
    (r'py:class', r'(Tensor|Module|Runner|Config|ConfigDict|Path|optional|callable|Callable|Sequence|Mapping'
                  r'|Iterable|Iterator)'),
    (r'py:.*', r'(os|pickle|_pickle|abc|urllib|io|json|signal|subprocess|threading|multiprocessing)\..*'),
    (r'py:(class|exc)', r'(Dropout|BatchNorm|LayerNorm|Linear|Conv2d|URLError|UnpicklingError)'),
]



def _exists(target: str) -> bool:
    """``target`` (dotted, or a short name / ``Class.attr``) names something in tlalign_mm."""
    import importlib
    import sys
    parts = target.split('.')
    if parts[0] == 'tlalign_mm':
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module('.'.join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                return False
            return True
        return False
    for name, mod in list(sys.modules.items()):
        if not name.startswith('tlalign_mm') or mod is None:
            continue
        obj = mod
        try:
            for attr in parts:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return True
    return False


def _resolve_package_name(app, env, node, contnode):
    """Resolve a Python reference that names a tlalign_mm object by a path other than the one it
    is documented under: a short name from inside its module (``rule_lambdas``) or a re-export
    (``tlalign_mm.TLAVisionTransformer``) links to the documented object; a name that exists but is
    not documented (a module constant, a private helper) is kept as plain code.  A name that does
    not exist in the package stays a warning, and ``-W`` fails the build.
    """
    if node.get('refdomain') != 'py':
        return None
    target = node['reftarget'].lstrip('~.')
    if not _exists(target):
        return None
    parts = target.split('.')
    tail = '.'.join(parts[-2:]) if node['reftype'] in ('meth', 'attr') and len(parts) > 1 else parts[-1]
    objects = env.get_domain('py').objects
    hits = {(e.docname, e.node_id): name for name, e in objects.items()
            if name.startswith('tlalign_mm.') and name.endswith('.' + tail) and not e.aliased}
    if len(hits) != 1:
        return contnode
    (docname, node_id), name = next(iter(hits.items()))
    from sphinx.util.nodes import make_refnode
    return make_refnode(app.builder, node.get('refdoc', docname), docname, node_id, contnode, name)


def setup(app):
    app.connect('missing-reference', _resolve_package_name)


html_theme = 'furo'
html_title = f'tlalign_mm {version}'
html_static_path = []
