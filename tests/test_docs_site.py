"""The docs site as a reader sees it: the Sphinx build, its HTML, and screenshots in headless Chromium.

* ``sphinx -W --keep-going -n`` builds ``docs/`` into ``docs/_build/html`` with no warning (a warning,
  an unresolved cross-reference or a missing page fails, listing every one);
* in the built HTML every image exists, every internal link leads to a page and an anchor that
  exist, and no raw MyST markup (a ``{toctree}`` or ``{include}`` directive, a ``:::`` fence, a code
  fence) shows as text;
* the README, rendered as GitHub-flavoured Markdown, has no broken image;
* Debian's ``chromium`` screenshots the README's first screen and the docs index into
  ``docs/_build/screenshots/{readme,index}.png``; a blank screenshot fails.
"""
from __future__ import annotations

import html.parser
import os
import os.path as osp
import shutil
import subprocess
import sys
import urllib.parse

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BUILD = osp.join(REPO, 'docs', '_build')
HTML = osp.join(BUILD, 'html')
SHOTS = osp.join(BUILD, 'screenshots')
RAW_MYST = ('{toctree}', '{include}', '{eval-rst}', '{note}', '{warning}', ':::', '```', '{math}', ']{#')
CHROMIUM = next((shutil.which(c) for c in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(c)),
                None)


class Page(html.parser.HTMLParser):
    """The images, links, element ids and visible text (outside ``<pre>``, scripts and styles) of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images, self.links, self.ids, self.text = [], [], set(), []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'):
            self.ids.add(a['id'])
        if tag == 'img' and a.get('src'):
            self.images.append(a['src'])
        if tag == 'a' and a.get('href'):
            self.links.append(a['href'])
        if tag in ('pre', 'script', 'style', 'code'):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ('pre', 'script', 'style', 'code'):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(path: str) -> Page:
    p = Page()
    with open(path, encoding='utf-8') as f:
        p.feed(f.read())
    return p


def html_problems(root: str) -> list[str]:
    """Broken images, dead internal links or anchors and raw MyST in every page under ``root``."""
    pages = {}
    for d, _, files in os.walk(root):
        if '/_modules' in d or '/_sources' in d or '/_static' in d:
            continue
        for f in files:
            if f.endswith('.html'):
                pages[osp.join(d, f)] = parse(osp.join(d, f))
    problems = []
    for path, page in sorted(pages.items()):
        rel = osp.relpath(path, root)
        for src in page.images:
            if src.startswith(('http:', 'https:', 'data:')):
                continue
            if not osp.isfile(osp.normpath(osp.join(osp.dirname(path), urllib.parse.unquote(src)))):
                problems.append(f'{rel}: broken image {src}')
        for href in page.links:
            if href.startswith(('http:', 'https:', 'mailto:', 'javascript:')):
                continue
            target, _, anchor = href.partition('#')
            tpath = path if not target else osp.normpath(osp.join(osp.dirname(path), urllib.parse.unquote(target)))
            if target and not osp.exists(tpath):
                problems.append(f'{rel}: dead link {href}')
                continue
            if anchor and tpath.endswith('.html') and '/_modules/' not in tpath:
                tpage = pages.get(tpath) or parse(tpath)
                if urllib.parse.unquote(anchor) not in tpage.ids:
                    problems.append(f'{rel}: dead anchor {href}')
        text = ''.join(page.text)
        for raw in RAW_MYST:
            if raw in text:
                i = text.index(raw)
                problems.append(f'{rel}: raw markup {raw!r} shows as text: ...{text[max(0, i - 60):i + 60]!r}...')
    return problems


def render_readme(out_dir: str) -> str:
    """README.md as GitHub-flavoured Markdown (tables, strikethrough) in a GitHub-like page; returns the path."""
    from markdown_it import MarkdownIt
    md = MarkdownIt('commonmark', {'html': True}).enable(['table', 'strikethrough'])
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        body = md.render(f.read())
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, 'README.html')
    style = ('body{max-width:980px;margin:24px auto;padding:0 32px;font:16px/1.5 -apple-system,"Segoe UI",'
             'Helvetica,Arial,sans-serif;color:#1f2328}pre{background:#f6f8fa;padding:16px;overflow:auto;'
             'font-size:85%}code{background:#eff1f3;padding:.2em .4em;border-radius:6px}pre code{background:none;'
             'padding:0}table{border-collapse:collapse}td,th{border:1px solid #d1d9e0;padding:6px 13px}'
             'blockquote{border-left:.25em solid #d1d9e0;color:#59636e;margin:0;padding:0 1em}img{max-width:100%}'
             'h1,h2{border-bottom:1px solid #d1d9e0;padding-bottom:.3em}')
    with open(path, 'w', encoding='utf-8') as f:
        f.write(f'<!doctype html><html><head><meta charset="utf-8"><base href="file://{REPO}/">'
                f'<style>{style}</style></head><body>{body}</body></html>')
    return path


def screenshot(url: str, png: str, size=(1280, 900)) -> None:
    if osp.exists(png):
        os.remove(png)
    cmd = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
           '--allow-file-access-from-files', f'--window-size={size[0]},{size[1]}', f'--screenshot={png}', url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert osp.isfile(png), f'chromium wrote no screenshot of {url}:\n{out.stderr[-2000:]}'


def assert_not_blank(png: str) -> None:
    from PIL import Image
    with Image.open(png) as im:
        lo, hi = im.convert('L').getextrema()
        hist = im.convert('L').histogram()
    assert hi - lo > 100, f'{png} is blank (grey levels {lo}..{hi})'
    assert max(hist) < 0.99 * sum(hist), f'{png} is nearly one colour'


def test_html_checks_catch_a_broken_page(tmp_path):
    (tmp_path / 'a.html').write_text('<html><body><p id="x">{toctree} ok</p><img src="gone.png">'
                                     '<a href="b.html#nope">b</a><a href="#x">self</a><a href="c.html">c</a>'
                                     '<pre>```ok in code```</pre></body></html>')
    (tmp_path / 'b.html').write_text('<html><body><h1 id="top">b</h1></body></html>')
    problems = html_problems(str(tmp_path))
    assert sorted(p.split(':')[1].strip().split(' ')[0] for p in problems) == ['broken', 'dead', 'dead', 'raw']
    assert any('dead anchor b.html#nope' in p for p in problems) and any('dead link c.html' in p for p in problems)


@pytest.mark.slow
def test_docs_site_builds_without_warnings_and_reads_well():
    shutil.rmtree(HTML, ignore_errors=True)
    out = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-n', '-q', '-E', '-b', 'html',
                          'docs', HTML], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f'the docs build failed or warned:\n{out.stderr[-8000:]}'
    for page in ('index.html', 'get_started.html', 'api/index.html', 'model_zoo.html', 'benchmarks.html'):
        assert osp.isfile(osp.join(HTML, page)), f'the site has no {page}'
    api = parse(osp.join(HTML, 'api', 'align.html'))
    assert sum(i.startswith('tlalign_mm.align.') for i in api.ids) >= 5, 'the API reference lost tlalign_mm.align'
    problems = html_problems(HTML)
    assert not problems, '\n'.join(problems)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_screenshots_of_the_readme_and_the_docs_index():
    readme = render_readme(osp.join(BUILD, 'readme'))
    page = parse(readme)
    broken = [s for s in page.images if not osp.isfile(osp.join(REPO, s))]
    assert not broken, f'README.md shows broken images: {broken}'
    os.makedirs(SHOTS, exist_ok=True)
    screenshot(f'file://{readme}', osp.join(SHOTS, 'readme.png'))
    assert_not_blank(osp.join(SHOTS, 'readme.png'))
    index = osp.join(HTML, 'index.html')
    if not osp.isfile(index):
        pytest.skip('the docs site is not built (test_docs_site_builds_without_warnings_and_reads_well builds it)')
    screenshot(f'file://{index}', osp.join(SHOTS, 'index.png'))
    assert_not_blank(osp.join(SHOTS, 'index.png'))
