"""The ``coco_voc`` set (group ``coco``): labelme's 3 VOC photos with 12 instance polygons, mmdet COCO layout.

Converts labelme's ``examples/instance_segmentation/data_dataset_coco/annotations.json`` (drops
category 0, renumbers ids from 1, recomputes boxes / areas from the clipped polygons) and checks the
result with :func:`validate_coco` (own checks, plus pycocotools' rasterisation when importable).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .common import RECIPE_VERSION, DataError, DemoSet, log, md_table, pins_under, source_table, write_bytes, write_json
from .labelme import EXAMPLES, LABELME, LABELME_RENAME, VOC_CLASSES, labelme_files


def _poly_area(poly: list[float]) -> float:
    """Shoelace area of a flat ``[x0, y0, x1, y1, ...]`` polygon."""
    x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _poly_perimeter(poly: list[float]) -> float:
    """Perimeter of a flat ``[x0, y0, x1, y1, ...]`` polygon (closed)."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def validate_coco(coco: dict, images_dir: Path, name: str, require_masks: bool) -> list[str]:
    """Checks an instances json: ids, references, boxes/polygons inside images, areas.

    Own checks always; with pycocotools importable also: ``COCO()`` indexes it, every polygon
    rasterises to a non-empty mask of the image's size whose area / box agree with the json.
    Returns notes for the log; raises :class:`DataError` on the first failure.
    """
    def fail(msg):
        raise DataError(f'{name}: {msg}')

    imgs = {im['id']: im for im in coco['images']}
    cats = {c['id'] for c in coco['categories']}
    if len(imgs) != len(coco['images']) or min(imgs) < 1:
        fail('image ids must be unique and >= 1')
    ann_ids = [a['id'] for a in coco['annotations']]
    if len(set(ann_ids)) != len(ann_ids) or min(ann_ids) < 1:
        fail('annotation ids must be unique and >= 1')
    for im in coco['images']:
        p = images_dir / im['file_name']
        if not p.is_file():
            fail(f'missing image {p}')
        with Image.open(p) as pil:
            if pil.size != (im['width'], im['height']):
                fail(f"{im['file_name']}: size {pil.size} != json {(im['width'], im['height'])}")
    for a in coco['annotations']:
        im = imgs.get(a['image_id'])
        if im is None or a['category_id'] not in cats:
            fail(f"annotation {a['id']}: unknown image or category")
        w, h = im['width'], im['height']
        x, y, bw, bh = a['bbox']
        if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
            fail(f"annotation {a['id']}: bbox {a['bbox']} outside the {w}x{h} image or empty")
        if a['area'] <= 0:
            fail(f"annotation {a['id']}: area {a['area']}")
        seg = a.get('segmentation')
        if require_masks:
            if not isinstance(seg, list) or not seg:
                fail(f"annotation {a['id']}: no polygon")
            for part in seg:
                if len(part) < 6 or len(part) % 2:
                    fail(f"annotation {a['id']}: polygon with {len(part)} coordinates")
                xs, ys = np.asarray(part[0::2]), np.asarray(part[1::2])
                if xs.min() < 0 or ys.min() < 0 or xs.max() > w or ys.max() > h:
                    fail(f"annotation {a['id']}: polygon outside the image")
    notes = [f'{len(imgs)} images, {len(ann_ids)} annotations, {len(cats)} categories: own checks passed']
    if importlib.util.find_spec('pycocotools') is None:
        notes.append('pycocotools not importable: its checks skipped')
        return notes
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    api = COCO()
    api.dataset = json.loads(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    worst, n_masks = 0.0, 0
    for a in coco['annotations']:
        if not a.get('segmentation'):
            continue
        im = imgs[a['image_id']]
        m = api.annToMask(a)
        if m.shape != (im['height'], im['width']) or m.sum() == 0:
            fail(f"annotation {a['id']}: polygon rasterises to {m.shape}, {int(m.sum())} pixels")
        rle = mask_utils.encode(np.asfortranarray(m))
        marea = float(mask_utils.area(rle))
        tol = 0.75 * sum(_poly_perimeter(p) for p in a['segmentation']) + 4
        if abs(marea - a['area']) > tol:
            fail(f"annotation {a['id']}: rasterised area {marea} vs json area {a['area']} (tolerance {tol:.0f})")
        mb = mask_utils.toBbox(rle)
        if np.abs(mb - np.asarray(a['bbox'])).max() > 2.0:
            fail(f"annotation {a['id']}: mask box {mb.tolist()} vs json bbox {a['bbox']}")
        worst = max(worst, abs(marea - a['area']) / a['area'])
        n_masks += 1
    if n_masks:
        notes.append(f'pycocotools: indexed; {n_masks} polygons rasterise inside their images; '
                     f'worst |mask area - area| = {100 * worst:.1f}% of area')
    else:
        notes.append('pycocotools: indexed (boxes only)')
    return notes


class CocoVocSet(DemoSet):
    """labelme's VOC photos with instance polygons as a COCO instances json, train = val."""

    name = 'coco_voc'
    group = 'coco'
    layout_help = ('coco_voc/annotations/instances_{train,val}.json (COCO instances with polygons, '
                   'file_name relative to the image folder) + coco_voc/{train,val}/<file_name>')
    pins = pins_under(LABELME, 'LICENSE', EXAMPLES + 'instance_segmentation/')

    def recipe(self, args):
        """labelme archive and the pins of the files used."""
        return dict(recipe_version=RECIPE_VERSION, source=f"pypi:{LABELME['name']}=={LABELME['version']}",
                    archive_sha256=LABELME['sha256'], pins=self.pins)

    def build(self, root, args, cache):
        """Convert labelme's COCO json (ids, categories, boxes, areas), copy the photos, validate."""
        files = labelme_files(args, cache)
        base = EXAMPLES + 'instance_segmentation/data_dataset_coco/'
        src = json.loads(files[base + 'annotations.json'])
        src_cats = {c['id']: c['name'] for c in src['categories']}
        # Category 0 is labelme's _background_: dropped; the VOC ids 1..20 are kept as they are.
        categories = []
        for cid in sorted(src_cats):
            name = LABELME_RENAME.get(src_cats[cid], src_cats[cid])
            if cid == 0:
                if name != 'background':
                    raise DataError(f'expected category 0 to be _background_, got {src_cats[cid]!r}')
                continue
            if VOC_CLASSES[cid] != name:
                raise DataError(f'category {cid} is {src_cats[cid]!r}, expected {VOC_CLASSES[cid]!r}')
            categories.append(dict(id=cid, name=name, supercategory='voc'))
        # Images renumbered from 1 in file-name order; file_name loses its 'JPEGImages/' prefix.
        src_imgs = sorted(src['images'], key=lambda im: im['file_name'])
        new_img_id = {im['id']: k + 1 for k, im in enumerate(src_imgs)}
        images = []
        for im in src_imgs:
            fname = im['file_name'].split('/')[-1]
            data = files[base + 'JPEGImages/' + fname]
            w, h = Image.open(io.BytesIO(data)).size
            if (w, h) != (im['width'], im['height']):
                raise DataError(f"{fname}: image {w}x{h} vs json {im['width']}x{im['height']}")
            images.append(dict(id=new_img_id[im['id']], file_name=fname, width=w, height=h))
            for split in ('train', 'val'):
                write_bytes(root / split / fname, data)
        sizes = {new_img_id[im['id']]: (im['width'], im['height']) for im in src_imgs}
        anns, clipped = [], 0
        src_anns = sorted((a for a in src['annotations'] if a['category_id'] != 0),
                          key=lambda a: (new_img_id[a['image_id']], a['id']))
        for k, a in enumerate(src_anns):
            img_id = new_img_id[a['image_id']]
            w, h = sizes[img_id]
            parts = []
            for part in a['segmentation']:
                xy = np.asarray(part, dtype=np.float64).reshape(-1, 2)
                c = np.stack([np.clip(xy[:, 0], 0, w), np.clip(xy[:, 1], 0, h)], 1)
                clipped += int((c != xy).any())
                parts.append([float(v) for v in c.reshape(-1)])
            allxy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in parts])
            x0, y0 = allxy.min(0)
            x1, y1 = allxy.max(0)
            anns.append(dict(id=k + 1, image_id=img_id, category_id=a['category_id'], segmentation=parts,
                             area=round(sum(_poly_area(p) for p in parts), 2),
                             bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)], iscrowd=0))
        coco = dict(info=dict(description='labelme 6.3.1 examples/instance_segmentation (3 PASCAL VOC 2012 '
                                          'photos) converted by tools/prepare_demo_data.py',
                              version=LABELME['version']),
                    licenses=[dict(id=1, name='GPL-3.0-only (labelme); photos from Flickr via PASCAL VOC 2012',
                                   url='https://www.gnu.org/licenses/gpl-3.0.html')],
                    images=images, annotations=anns, categories=categories)
        for split in ('train', 'val'):
            write_json(root / 'annotations' / f'instances_{split}.json', coco)
        (root / 'LICENSE.labelme.txt').write_bytes(files['LICENSE'])
        for note in validate_coco(coco, root / 'train', 'coco_voc/instances_train.json', require_masks=True):
            log('  ' + note)
        per_cat = Counter(categories[[c['id'] for c in categories].index(a['category_id'])]['name'] for a in anns)
        counts = dict(images=len(images), annotations=len(anns), categories=len(categories),
                      instances_per_class=dict(sorted(per_cat.items())))
        log(f'  {len(images)} images, {len(anns)} instances ({dict(sorted(per_cat.items()))}); '
            f'train = val; {clipped} polygon(s) clipped to the image')
        return dict(card=self.card(images, anns, per_cat, clipped), counts=counts,
                    sources=dict(archive=LABELME['filename'], archive_sha256=LABELME['sha256'], files=self.pins))

    def card(self, images, anns, per_cat, clipped):
        """The set's ``DATA_CARD.md``."""
        img_rows = [[im['id'], f"`{im['file_name']}`", f"{im['width']}x{im['height']}",
                     sum(a['image_id'] == im['id'] for a in anns)] for im in images]
        cat_rows = [[cid, VOC_CLASSES[cid], per_cat.get(VOC_CLASSES[cid], 0)] for cid in range(1, 21)]
        present = tuple(c for c in VOC_CLASSES[1:] if per_cat.get(c))
        return f"""# VOC photos as COCO instances (instance segmentation / detection)

The 3 PASCAL VOC 2012 photos of labelme's `examples/instance_segmentation/data_dataset_coco`,
with {len(anns)} hand-drawn instance polygons, in mmdet's COCO layout. For exercising the
Cascade Mask R-CNN pipeline, not for measuring accuracy.

- **Source**: `{LABELME['name']}=={LABELME['version']}` source archive `{LABELME['filename']}`
  (sha256 `{LABELME['sha256']}`), {LABELME['page']}.
- **Licence**: labelme is {LABELME['licence']} (copy in `LICENSE.labelme.txt`); the photos
  originate from Flickr via PASCAL VOC 2012 (subject to Flickr's terms of use).
- **Split**: `instances_train.json` and `instances_val.json` are identical and `train/` and
  `val/` hold the same 3 images: with 3 images a held-out split would leave val with classes
  absent from training; val measures fitting.
- **Counts**: {len(images)} images, {len(anns)} instances, 20 categories (VOC ids 1..20), of which
  {len(present)} occur: {', '.join(present)}.

## Layout (mmdet)

```
coco_voc/
  annotations/instances_train.json
  annotations/instances_val.json
  train/<file_name>.jpg
  val/<file_name>.jpg
```

Config: `dict(type='CocoDataset', data_root='data/demo/coco_voc', ann_file='annotations/instances_train.json',
data_prefix=dict(img='train/'), metainfo=dict(classes=<names>))`. With the 20 VOC names every class
has a head output (14 never occur); `metainfo=dict(classes={present!r})` keeps only the occurring ones
(mmdet maps the chosen names' ids to labels 0..n-1).

## Images

{md_table(['id', 'file_name', 'size (WxH)', 'instances'], img_rows)}

## Categories

{md_table(['id', 'name', 'instances'], cat_rows)}

## Quirks handled

- labelme's category 0 `_background_` is dropped; the VOC ids 1..20 are kept (no annotation
  used category 0). Names follow mmdet's VOC spelling (`pottedplant`, `tvmonitor`).
- `file_name` had a `JPEGImages/` prefix: stripped (images sit directly in `train/` and `val/`).
- Image and annotation ids started at 0 (valid JSON, but 0 is falsy in some tools): renumbered
  from 1 (images in file-name order).
- labelme's `area` / `bbox` came from its own rasterisation and do not match the polygons
  (boxes off by up to 1-2 px; areas 0.4-7 % above pycocotools' masks): recomputed from the polygons
  (bbox = polygon extent, area = polygon area, shoelace, summed over parts). Checked against
  pycocotools' rasterisation.
- {clipped} polygon(s) reached slightly past the image border (by < 1 px): clipped to the image.
- Some instances consist of several polygons (an occluded person in 2 parts, a sofa in 4).
- These JPEGs are not byte-identical to the same photos in `semantic_segmentation/` (a different
  re-encoding by labelme); each set uses the files its annotations were made on.

## Sources (sha256 of every file read from the archive)

{source_table(self.pins)}
"""

