"""Generate the deterministic synthetic detection dataset used by the demo and the tests.

Images show filled shapes (circle, square, triangle) of random colours and sizes on
cluttered backgrounds (colour gradients, random lines, blobs and pixel noise);
objects of several scales per image, some overlapping. The same images are
described twice:

    <out>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    <out>/VOCdevkit/VOC2007/Annotations/<id>.xml           (VOC xml)
    <out>/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt
    <out>/annotations/instances_{train,val}.json           (COCO json, images under VOC2007/JPEGImages)

``val`` and ``test`` are the same split. Same arguments → byte-identical annotations.
Command line: ``python tools/misc/make_demo_data.py --out data/demo``.
"""

import json
import math
import os
import os.path as osp
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['CLASSES', 'generate', 'make_image']

CLASSES = ('circle', 'square', 'triangle')
Box = Tuple[float, float, float, float]


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(rng: np.random.RandomState, w: int, h: int) -> Image.Image:
    """Gradient + clutter (lines, blobs, noise) in muted colours."""
    c0, c1 = rng.randint(40, 200, size=3), rng.randint(40, 200, size=3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.rand() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 1))
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.randint(4, 10)):  # clutter lines
        pts = [tuple(rng.randint(0, max(w, h), size=2).tolist()) for _ in range(2)]
        draw.line(pts, fill=tuple(rng.randint(30, 220, size=3).tolist()), width=int(rng.randint(1, 3)))
    for _ in range(rng.randint(3, 8)):  # small blobs (ellipses thinner than any object)
        x, y = rng.randint(0, w), rng.randint(0, h)
        rx, ry = rng.randint(2, 6), rng.randint(1, 3)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tuple(rng.randint(30, 220, size=3).tolist()))
    pil = pil.filter(ImageFilter.GaussianBlur(0.6))
    arr = np.asarray(pil).astype(np.float32) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.RandomState, label: int, box: Box) -> None:
    x1, y1, x2, y2 = box
    color = tuple(int(v) for v in rng.randint(0, 256, size=3))
    # keep objects distinguishable from the muted background: one saturated channel
    color = tuple(255 if i == rng.randint(0, 3) else v for i, v in enumerate(color))
    if CLASSES[label] == 'circle':
        draw.ellipse([x1, y1, x2, y2], fill=color)
    elif CLASSES[label] == 'square':
        draw.rectangle([x1, y1, x2, y2], fill=color)
    else:  # triangle, apex up or down
        if rng.rand() < 0.5:
            pts = [((x1 + x2) / 2, y1), (x2, y2), (x1, y2)]
        else:
            pts = [(x1, y1), (x2, y1), ((x1 + x2) / 2, y2)]
        draw.polygon(pts, fill=color)


def make_image(
    rng: np.random.RandomState, size: Tuple[int, int], min_obj: int, max_obj: int
) -> Tuple[Image.Image, List[Tuple[int, Box]]]:
    """One image and its objects as (label, (x1, y1, x2, y2)) in pixel coordinates."""
    w, h = size
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    objects: List[Tuple[int, Box]] = []
    n = rng.randint(min_obj, max_obj + 1)
    tries = 0
    while len(objects) < n and tries < 100:
        tries += 1
        # log-uniform side between 10% and 45% of the short side: several scales
        short = min(w, h)
        side = math.exp(rng.uniform(math.log(0.10 * short), math.log(0.45 * short)))
        bw = side * rng.uniform(0.8, 1.25)
        bh = side * rng.uniform(0.8, 1.25)
        x1 = rng.uniform(0, w - bw)
        y1 = rng.uniform(0, h - bh)
        box = (round(x1), round(y1), round(x1 + bw), round(y1 + bh))
        # allow some overlap, but keep every object mostly visible
        if any(_iou(box, b) > 0.25 for _, b in objects):
            continue
        label = int(rng.randint(len(CLASSES)))
        _draw_object(draw, rng, label, box)
        objects.append((label, box))
    return img, objects


def _voc_xml(img_id: str, size: Tuple[int, int], objects: List[Tuple[int, Box]]) -> ET.ElementTree:
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'VOC2007'
    ET.SubElement(root, 'filename').text = f'{img_id}.jpg'
    sz = ET.SubElement(root, 'size')
    for k, v in zip(('width', 'height', 'depth'), (size[0], size[1], 3)):
        ET.SubElement(sz, k).text = str(v)
    for label, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, 'object')
        ET.SubElement(obj, 'name').text = CLASSES[label]
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        ET.SubElement(obj, 'truncated').text = '0'
        ET.SubElement(obj, 'difficult').text = '0'
        bb = ET.SubElement(obj, 'bndbox')
        # VOC boxes are 1-based and inclusive
        for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), (x1 + 1, y1 + 1, x2, y2)):
            ET.SubElement(bb, k).text = str(int(v))
    ET.indent(root)
    return ET.ElementTree(root)


def generate(
    out: str,
    num_train: int = 400,
    num_val: int = 100,
    size: Tuple[int, int] = (160, 160),
    min_obj: int = 2,
    max_obj: int = 6,
    seed: int = 0,
) -> Dict[str, int]:
    """Write the dataset under ``out``; return the number of images per split."""
    voc = osp.join(out, 'VOCdevkit', 'VOC2007')
    for d in ('JPEGImages', 'Annotations', osp.join('ImageSets', 'Main')):
        os.makedirs(osp.join(voc, d), exist_ok=True)
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)]
    counts = {}
    for split, num, split_seed in (('train', num_train, seed), ('val', num_val, seed + 1000)):
        rng = np.random.RandomState(split_seed)
        images, anns, ids = [], [], []
        for i in range(num):
            img_id = f'{split}_{i:05d}'
            img, objects = make_image(rng, size, min_obj, max_obj)
            img.save(osp.join(voc, 'JPEGImages', f'{img_id}.jpg'), quality=95)
            _voc_xml(img_id, size, objects).write(osp.join(voc, 'Annotations', f'{img_id}.xml'))
            ids.append(img_id)
            images.append(dict(id=len(images) + 1, file_name=f'{img_id}.jpg', width=size[0], height=size[1]))
            for label, (x1, y1, x2, y2) in objects:
                anns.append(
                    dict(
                        id=len(anns) + 1,
                        image_id=images[-1]['id'],
                        category_id=label + 1,
                        bbox=[x1, y1, x2 - x1, y2 - y1],
                        area=(x2 - x1) * (y2 - y1),
                        iscrowd=0,
                        segmentation=[[x1, y1, x2, y1, x2, y2, x1, y2]],
                    )
                )
        with open(osp.join(out, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=anns, categories=categories), f)
        names = [split] + (['test'] if split == 'val' else [])
        for name in names:
            with open(osp.join(voc, 'ImageSets', 'Main', f'{name}.txt'), 'w') as f:
                f.write('\n'.join(ids) + '\n')
        counts[split] = num
    with open(osp.join(voc, 'ImageSets', 'Main', 'trainval.txt'), 'w') as f:
        f.write(
            open(osp.join(voc, 'ImageSets', 'Main', 'train.txt')).read()
            + open(osp.join(voc, 'ImageSets', 'Main', 'val.txt')).read()
        )
    return counts
