import os.path as osp

from setuptools import find_packages, setup


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt, without comments and -r includes."""
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        lines = [ln.split('#')[0].strip() for ln in f]
    return [ln for ln in lines if ln and not ln.startswith('-')]


def read_version():
    ns = {}
    with open(osp.join(osp.dirname(__file__), 'tlalign_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


setup(
    name='tlalign_mm',
    version=read_version(),
    description='Token-Label Alignment for DeiT and Swin on mmengine / mmseg / mmdet',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'data')),
    package_data={'tlalign_mm.evaluation': ['wnids/*.txt', 'wnids/*.md']},
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mm': read_requirements('mminstall.txt'),
        'tests': read_requirements('tests.txt'),
        'docs': read_requirements('docs.txt'),
    },
    zip_safe=False,
)
