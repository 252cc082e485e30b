"""The ``voc_seg`` set (group ``seg``): 8 real photos with class masks from the labelme archive, mmseg layout.

3 PASCAL VOC 2012 photos (``examples/semantic_segmentation``) and 5 street-video frames
(``examples/video_annotation``), their labelme ``.npy`` class maps remapped to one class list
(VOC's 21 + ``truck``) and written as palette PNGs (uint8, 255 = ignore) under
``{img_dir,ann_dir}/{train,val}/``.
"""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image

from .common import RECIPE_VERSION, DataError, DemoSet, log, md_table, pins_under, png_bytes, source_table, write_bytes
from .labelme import EXAMPLES, LABELME, LABELME_RENAME, VOC_CLASSES, labelme_files

SEG_CLASSES = VOC_CLASSES + ('truck',)
IGNORE_INDEX = 255


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (index 255 -> (224, 224, 192)) as a flat RGB list."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def label_png(label: np.ndarray) -> bytes:
    """A uint8 class-index map as a palette ('P') PNG: ``np.array(Image.open(f))`` gives the indices."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    img = Image.frombytes('P', (label.shape[1], label.shape[0]), label.tobytes())
    img.putpalette(voc_palette())
    return png_bytes(img)


def _npy(data: bytes) -> np.ndarray:
    """An ``.npy`` file's array (no pickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


class VocSegSet(DemoSet):
    """labelme's VOC photos + street frames with class masks, train = val, in mmseg's layout."""

    name = 'voc_seg'
    group = 'seg'
    layout_help = ('voc_seg/img_dir/{train,val}/<stem>.jpg + voc_seg/ann_dir/{train,val}/<stem>.png '
                   '(uint8 class indices, 255 = ignore, 0 = background) + voc_seg/classes.txt (line i = class i)')
    pins = pins_under(LABELME, 'LICENSE', EXAMPLES + 'semantic_segmentation/', EXAMPLES + 'video_annotation/')

    def recipe(self, args):
        """labelme archive, the pins of the files used and the class list."""
        return dict(recipe_version=RECIPE_VERSION, source=f"pypi:{LABELME['name']}=={LABELME['version']}",
                    archive_sha256=LABELME['sha256'], pins=self.pins, classes=list(SEG_CLASSES))

    def build(self, root, args, cache):
        """Remap labelme's class maps to :data:`SEG_CLASSES` and write images, label PNGs and licence."""
        files = labelme_files(args, cache)
        sem = EXAMPLES + 'semantic_segmentation/data_dataset_voc/'
        vid = EXAMPLES + 'video_annotation/data_dataset_voc/'
        class_index = {c: i for i, c in enumerate(SEG_CLASSES)}

        def mapping(class_names_txt: str) -> np.ndarray:
            names = [ln.strip() for ln in files[class_names_txt].decode().splitlines() if ln.strip()]
            lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
            for i, n in enumerate(names):
                lut[i] = class_index[LABELME_RENAME.get(n, n)]
            return names, lut

        voc_names, voc_lut = mapping(sem + 'class_names.txt')
        if [LABELME_RENAME.get(n, n) for n in voc_names] != list(VOC_CLASSES):
            raise DataError(f'labelme VOC class list is not the VOC order: {voc_names}')
        vid_names, vid_lut = mapping(vid + 'class_names.txt')

        items = []  # (stem, jpg bytes, label npy path, palette png path, lut, origin)
        for stem in ('2011_000003', '2011_000006', '2011_000025'):
            items.append((stem, sem + f'JPEGImages/{stem}.jpg', sem + f'SegmentationClassNpy/{stem}.npy',
                          sem + f'SegmentationClass/{stem}.png', voc_lut, 'VOC2012 photo'))
        for k in range(100, 105):
            stem = f'{k:08d}'
            items.append((stem, vid + f'JPEGImages/{stem}.jpg', vid + f'SegmentationClass/{stem}.npy',
                          vid + f'SegmentationClassPNG/{stem}.png', vid_lut, 'video frame'))

        pixels = Counter()
        rows = []
        for stem, jpg, npy, png, lut, origin in items:
            lab = _npy(files[npy])
            if lab.ndim != 2:
                raise DataError(f'{npy}: expected a 2-D class map, got shape {lab.shape}')
            ref = np.array(Image.open(io.BytesIO(files[png])))
            if not np.array_equal(np.where(lab < 0, IGNORE_INDEX, lab), ref):
                raise DataError(f'{npy} and {png} disagree')
            w, h = Image.open(io.BytesIO(files[jpg])).size
            if lab.shape != (h, w):
                raise DataError(f'{npy}: mask {lab.shape} vs image {(h, w)}')
            vals = np.unique(lab)
            if vals.min() < -1 or vals.max() >= 255 or (lut[vals[vals >= 0]] == IGNORE_INDEX).any():
                raise DataError(f'{npy}: unexpected class values {vals.tolist()}')
            out = np.where(lab < 0, IGNORE_INDEX, lut[np.clip(lab, 0, 255)]).astype(np.uint8)
            ann = label_png(out)
            for split in ('train', 'val'):
                write_bytes(root / 'img_dir' / split / f'{stem}.jpg', files[jpg])
                write_bytes(root / 'ann_dir' / split / f'{stem}.png', ann)
            u, c = np.unique(out, return_counts=True)
            pixels.update({int(a): int(b) for a, b in zip(u, c)})
            present = ', '.join(SEG_CLASSES[v] if v != IGNORE_INDEX else 'ignore(255)' for v in u.tolist())
            rows.append([f'`{stem}`', origin, f'{w}x{h}', present])
        (root / 'classes.txt').write_text(''.join(c + '\n' for c in SEG_CLASSES))
        (root / 'LICENSE.labelme.txt').write_bytes(files['LICENSE'])
        counts = dict(train=len(items), val=len(items), classes=len(SEG_CLASSES),
                      classes_present=sorted(SEG_CLASSES[v] for v in pixels if v != IGNORE_INDEX))
        log(f'  {len(items)} images (3 VOC photos + 5 video frames), same images in train and val; '
            f'{len(SEG_CLASSES)} classes, present: {", ".join(counts["classes_present"])}')
        return dict(card=self.card(rows, pixels), counts=counts,
                    sources=dict(archive=LABELME['filename'], archive_sha256=LABELME['sha256'], files=self.pins))

    def card(self, rows, pixels):
        """The set's ``DATA_CARD.md``."""
        cls_rows = [[i, c, pixels.get(i, 0)] for i, c in enumerate(SEG_CLASSES)] + [[255, 'ignore', pixels.get(255, 0)]]
        classes_tuple = ', '.join(repr(c) for c in SEG_CLASSES)
        return f"""# VOC + street-frames demo set (semantic segmentation)

8 real photos with hand-drawn class masks from the examples shipped in the labelme source archive:
3 PASCAL VOC 2012 photos (`examples/semantic_segmentation/data_dataset_voc`) and 5 consecutive
frames of a street video (`examples/video_annotation/data_dataset_voc`). For exercising the mmseg
pipeline (UperNet), not for measuring accuracy.

- **Source**: `{LABELME['name']}=={LABELME['version']}` source archive `{LABELME['filename']}`
  (sha256 `{LABELME['sha256']}`), {LABELME['page']}.
- **Licence**: labelme is {LABELME['licence']} (copy in `LICENSE.labelme.txt`); the VOC 2012
  photos originate from Flickr (PASCAL VOC: images subject to Flickr's terms of use). The origin
  of the video frames is not stated in the archive beyond being part of labelme's examples.
- **Split**: train and val hold the *same* 8 images. With 8 images a held-out split would leave
  val with classes never seen in training, and the 5 video frames are near-duplicates of each
  other, so any split leaks; val here measures fitting, i.e. that the pipeline learns.
- **Counts**: 8 train, 8 val; {len(SEG_CLASSES)} classes (VOC's 21 + `truck`).

## Layout (mmseg)

```
voc_seg/
  img_dir/{{train,val}}/<stem>.jpg
  ann_dir/{{train,val}}/<stem>.png   # palette PNG, pixel = class index (uint8), 255 = ignore
  classes.txt                      # line i = class i
```

Config: `dict(type='BaseSegDataset', data_root='data/demo/voc_seg',
data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'), img_suffix='.jpg',
seg_map_suffix='.png', reduce_zero_label=False, metainfo=dict(classes=({classes_tuple})))`
with `ignore_index=255` in the decode heads.

## Images

{md_table(['stem', 'origin', 'size (WxH)', 'classes present'], rows)}

## Classes (pixel counts over the 8 label maps)

{md_table(['index', 'class', 'pixels'], cls_rows)}

## Quirks handled

- Labels are taken from labelme's `SegmentationClassNpy` / `SegmentationClass/*.npy` (int32,
  `-1` = regions annotated `__ignore__`) -> 255; they are checked to equal labelme's palette
  PNGs pixel for pixel.
- One class list for both sources: VOC's 21 classes in VOC order (labelme's `_background_`,
  `potted plant`, `tv/monitor` renamed to mmseg's `background`, `pottedplant`, `tvmonitor`) plus
  `truck` (index 21). The video's own indices (`_background_`=0, `car`=1, `track`=2, as listed in
  its `class_names.txt`) are remapped to 0 / 7 (`car`) / 21.
- labelme's video label `track` marks a box truck (see `examples/video_annotation/.readme`), so
  it is named `truck` here.
- The video frames annotate only `car` and `truck`; everything else, including a few small
  pedestrians in the background, is `background` there, whereas in the VOC photos persons are
  class 15. This is the source annotation; it is kept as is.
- The car polygon is identical in all 5 frames (copied from frame to frame by the annotator).

## Sources (sha256 of every file read from the archive)

{source_table(self.pins)}
"""
