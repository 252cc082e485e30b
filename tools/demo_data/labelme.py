"""The labelme 6.3.1 source archive on PyPI: the pinned source of the ``voc_seg`` and ``coco_voc`` sets.

Its ``examples/`` folder holds 3 PASCAL VOC 2012 photos with class masks and COCO instance polygons,
and 5 annotated street-video frames.  :func:`labelme_files` fetches the archive once per run and
reads every pinned file from it; :data:`VOC_CLASSES` / :data:`LABELME_RENAME` map labelme's class
spellings to mmseg's / mmdet's VOC ones.
"""
from __future__ import annotations

from .common import DataError, SourceUnavailable, fetch_archive, log, read_archive_files

#: labelme's examples folder inside the archive (the prefix of most pinned paths).
EXAMPLES = 'examples/'
LABELME = dict(
    name='labelme', version='6.3.1', kind='sdist', filename='labelme-6.3.1.tar.gz',
    option='--labelme-archive',
    sha256='2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e',
    prefix='labelme-6.3.1/', licence='GPL-3.0-only', page='https://pypi.org/project/labelme/6.3.1/#files',
    files={
        'LICENSE': '8ceb4b9ee5adedde47b31e975c1d90c73ad27b6b165a1dcd80c7c545eb65b903',
        # semantic segmentation: 3 PASCAL VOC 2012 photos, VOC class masks (-1 = __ignore__)
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/class_names.txt':
            'fbb7c98a5329dd20f8ceab25ea091b1370eafcaaf19cab9536623e6e51552caa',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000003.jpg':
            '4409c3cd06827e2add28a6dbde4beaceedc40540019065a88fa4306ecfbf9183',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000006.jpg':
            '0a14b0d2e4fd82d1f20c911875051b2501c1a805f77fe8c05cad84ee1d6308d7',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000025.jpg':
            '01f0b224bdc6b2b1d8155070d8544cc2642d8ab142b418969ec8aa95ac721bd5',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000003.npy':
            'b8fa09887687b4d8352b24b165dbc49f90c3db16ef46e9a50bbf2e25e846a3bf',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000006.npy':
            '8ec9437453f7a08774f0aaed553132d0a10acb2fba18235fba2e6023a4d49640',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000025.npy':
            '653ba3cc8561515405a6abb87fcd042f6eed01fb2d0719f2c061a1508d721164',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000003.png':
            'b5e27fc8c38db53d26ed17a82344263db401066feafb2cf8e9a29f7acd43488c',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000006.png':
            '4791d59d7817eea320ca7360b6c3ec019f5001987036a3af4f1a582458ca767d',
        EXAMPLES + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000025.png':
            'c7a406ea94c185702bbc5d2af9b472a8a2a9f00b20f6d53efcf99b6d4b1e0676',
        # video annotation: 5 consecutive street frames, _background_/car/track masks
        EXAMPLES + 'video_annotation/data_dataset_voc/class_names.txt':
            '237b436baf4d544f64fb85d18e470d89ff90dc635ec041ffa70aa3291347336e',
        EXAMPLES + 'video_annotation/data_dataset_voc/JPEGImages/00000100.jpg':
            '703f2a06b7e1f57b8b0b506dc2132f941dc8685b0c56c67635ca756e229e7bf1',
        EXAMPLES + 'video_annotation/data_dataset_voc/JPEGImages/00000101.jpg':
            'fc103d75c25b40748d4f56817b83a1d8bf69546e3b5a62977bc9de688c97a271',
        EXAMPLES + 'video_annotation/data_dataset_voc/JPEGImages/00000102.jpg':
            'c2af2e5e11653185e5bf6d071e07c6289d6e11bc0ce2ee6062d325a81d548448',
        EXAMPLES + 'video_annotation/data_dataset_voc/JPEGImages/00000103.jpg':
            '7cff616cb49b8327d7193d9b358e474568ad638f826d0fbd47cf5cdc81392065',
        EXAMPLES + 'video_annotation/data_dataset_voc/JPEGImages/00000104.jpg':
            'aec6365060d160dd1a90c8206829c00c0e2860c967940566ce31b8df3137a990',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClass/00000100.npy':
            '5b94013e03efc962df7d3fb2b153afb0e5d706312194c8a078950770229ca312',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClass/00000101.npy':
            '60f982139b2de7c9628349b140a84c82b9035091b763e25f9317f4043350e3b2',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClass/00000102.npy':
            'c484a5f50c63149f5381135b1d96bef7d947101a99173436cff26eb3a8b11b77',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClass/00000103.npy':
            '79de97b4ceed4c305a5c1b9b34093026651fc0c6b9170e339177080dc4a3d549',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClass/00000104.npy':
            'f25ada1944cf0960588cdfe7060e97bc8a4aeab3437402c8a41b733e5e682851',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000100.png':
            'd24ec17093b823650249c8345eb89aca0ea13ed3096e231706cb3e942d0aa790',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000101.png':
            '90c8d357a2f1749f824239b3116b3c204bf8b1d3c2746b815e642da149c1eb72',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000102.png':
            'b0c6be9090403ada51e4f9b50ea7e844b4f7bbddeb88b8ce41628d23b2925097',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000103.png':
            '74864400d47753f233f6e46cb9bb6386bbf698e4bb79737a25a0b73173d6a13d',
        EXAMPLES + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000104.png':
            '84d4b8ce62bdcc0496368603c7448c9e978d863bfe30a562159953d60d1df23e',
        # instance segmentation: the same 3 VOC photos (re-encoded) with 12 COCO polygons
        EXAMPLES + 'instance_segmentation/data_dataset_coco/annotations.json':
            '935081d34679b92a74e0dc1acf04e5ac97b01cba7eefe26d5572e761ebf16ec2',
        EXAMPLES + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000003.jpg':
            '40c7f2fbf740c7e9707f97047a83593f6c36d8951a737b4287528932d809e80d',
        EXAMPLES + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000006.jpg':
            '9f58b8e4aca7f0411d3c8fe365da1ba5de9c36c729bda2f32cefbbb246ef1e1f',
        EXAMPLES + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000025.jpg':
            '52794c29522d495c942baf7d41823b91479ec55723bcc72d6080540831701b82',
    },
)

#: PASCAL VOC class order, spelled as mmseg's / mmdet's VOC datasets spell it.
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
#: labelme's spellings -> ours.  'track' in labelme's video example labels a box truck.
LABELME_RENAME = {'_background_': 'background', 'potted plant': 'pottedplant', 'tv/monitor': 'tvmonitor',
                  'track': 'truck'}


def labelme_files(args, cache: dict) -> dict[str, bytes]:
    """The pinned labelme files, fetched once per run (a failure is remembered, not retried)."""
    if 'labelme' not in cache:
        try:
            archive, _ = fetch_archive(LABELME, args)
            log(f'  reading {len(LABELME["files"])} pinned files from {archive.name}')
            cache['labelme'] = read_archive_files(LABELME, archive)
        except (SourceUnavailable, DataError) as e:
            cache['labelme'] = e
    if isinstance(cache['labelme'], Exception):
        raise cache['labelme']
    return cache['labelme']
