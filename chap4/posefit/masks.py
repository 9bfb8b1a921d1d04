"""Which pixels of a photograph are the object: a backdrop model from the image border, then edges.

(A noiseless image, a render on a flat backdrop, keeps the simple rule of
`clean_render_mask`: what differs from the backdrop's colour.)

A photo of an object on a table has no white background: the backdrop has
a colour, its brightness varies (a lamp makes a bright patch, the object
casts a soft shadow, a wall may show at the top), and the file is noisy.
`photo_mask` says which pixels are the object:

1. The backdrop: the pixels of a band along the image border, clustered
   (k-means) into up to three surfaces by chromaticity and log-brightness;
   the biggest is the floor.
2. Sure background: pixels that match a surface's chromaticity (within its
   own spread on the border) and lie within its range of brightness, and
   are connected to that surface's border pixels through such pixels. The
   floor's range reaches down to SHADOW_RATIO of its darkest border pixel,
   so a soft shadow or darker shading of the backdrop stays out of the
   object; another surface (a wall) gets no such allowance.
   On a grey floor, a pixel brighter than LOCAL_MATCH times the floor's
   local level (its median around it, which follows a lamp's patch) is no
   sure background.
3. Sure object: pixels whose chromaticity differs from every surface by
   more than OBJECT_CHROMA times its tolerance (but not a darker pixel
   within SHADOW_CHROMA of the floor's saturation: a shadow lit by bluer
   light than the lamp's), or, on a grey floor where
   hue says nothing, that are brighter than the floor's local level by
   OBJECT_BRIGHTNESS; the biggest such blobs (on a grey floor, with the
   blobs near the biggest: NEAR_BLOBS).
4. Edges (on a grey floor judged against the noise, which grows with the
   light): a sure-object patch with no edges around it is light on the
   floor (a lamp's bright patch, a highlight), not the object: the sure
   object is cut along the image's strong edges, and a piece whose rim is
   mostly smooth (fewer than EDGE_SUPPORT of its rim pixels on a strong
   edge) is left to step 5. And the backdrop, cut along its edges (fainter
   ones count there: FLOOR_EDGE, on a grey floor with their faint
   continuations), stays sure background only in the pieces
   that reach the image's border, lie mostly away from the object or in
   shadow: a grey object's shaded side matches a grey floor's colour and
   brightness, but the object's outline parts the two. On a grey floor a
   piece the edges wall off from the border (through gaps of a pixel or two
   at most), not in shadow, is sure object (`enclosed`: a white teapot's
   body, which matches the floor).
5. The rest is split between the two by a watershed on the image's
   gradient: the boundary falls on the strongest edges (the object's
   outline), not on a shadow's or a lamp's soft fall-off.
6. Clean-up (scikit-image): specks removed, the biggest blobs kept (and,
   on a grey floor, those near the biggest), holes
   smaller than 0.1% of the image filled (a teapot's handle opening is a
   real hole).

`floor_readings` gives the mask with each surface of the border taken for
the floor in turn (the one that holds most of the border may be a wall);
the mesh chooses among them (posefit.readings.choose_reading).

`refine_with_silhouette` redoes step 5 around a fitted pose's silhouette
(sure object well inside it, sure background well outside, edges in
between): once the pose is roughly known, a lamp's bright patch or a
shadow next to the object can no longer pass for it. `in_front` finds,
around it, what neither mask holds and reaches well beyond the
silhouette: something in front of the object (a post, a box), whose
pixels the refined mask gives to the background.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree
from skimage import filters, measure, morphology, segmentation

BORDER_BAND = 0.03  # the band along the image border that shows the backdrop, as a share of the shorter side
SURFACES = 3  # at most this many backdrop surfaces (floor, wall, ...)
CHROMA_TOLERANCE = 4.0  # a surface's chromaticity tolerance: this times its border pixels' 75th-percentile spread
MIN_CHROMA_TOLERANCE = 0.008  # ... but at least this (chromaticity r, g in [0, 1])
MIN_RGB_TOLERANCE = 0.012  # the RGB residual's least tolerance (values in [0, 1])
# ... and at most these: a cluster of the border's pixels that spreads wider is no one surface but several (a box
# cut by the frame, its lit and its shaded faces and its shadow in one cluster), and its tolerance took in the
# floor and the object with it (a distractor probe's cow, session 52: its mask 0.575 IoU with the truth, 0.963
# capped). Above every surface of the RGB photos of seeds 25-42 (1,065 of them: at most 0.139 and 0.248).
MAX_CHROMA_TOLERANCE = 0.2
MAX_RGB_TOLERANCE = 0.3
SHADOW_RATIO = 0.1  # the floor's pixels may be this dark relative to its darkest border pixel
SHADOW_CHROMA = 0.3  # a shadow moves a coloured floor's chromaticity by less than this share of its saturation
OBJECT_CHROMA = 1.5  # sure object: chromaticity this many tolerances away from every surface
OBJECT_BRIGHTNESS = 1.2  # ... or, on a grey floor, this much brighter than the floor's local level
OBJECT_BRIGHTER_THAN_BORDER = 1.25  # (on another floor, with chromaticity off by a tolerance: than its brightest border pixel)
LOCAL_WINDOW = 2 / 3  # the floor's local level: its median over a window this share of the shorter side
LOCAL_MATCH = 1.1  # the floor's backdrop is at most this much brighter than its local level
GREY = 0.035  # a floor whose colour direction is this close to (1, 1, 1) / sqrt(3) is grey
STRONG_EDGE = 4.0  # a strong edge: a gradient this many times the border's 90th percentile (its noise)
# ... but the noise is at most NOISE_SIDES times the median of the four sides' own 90th percentiles: where two
# surfaces meet along one side (a light wall's strip a few pixels tall at the top, its edge with a dark floor
# within the band all the way across) that side's edge is no noise, and it set the noise so high that no outline
# was strong. Fresh seed 95 case 8, a white teapot on dark grey: the border's percentile 11.3 times the sides'
# median, the mask 37 pixels and the command refused the photo ("no foreground"); capped, the mask's IoU with the
# truth 0.918. On the 386 RGB photos of seeds 77-95 the next largest ratio is 2.9 (78/23): no other photo's edges
# change.
NOISE_SIDES = 3.0
FLOOR_EDGE = 2.5  # near the object the floor is cut along edges this many times the border's noise
FLOOR_EDGE_LOW = 1.5  # ... and along their fainter continuations, down to this many times (hysteresis)
EDGE_SUPPORT = 0.35  # a sure-object piece stays sure if this share of its rim lies on strong edges
NEAR_OBJECT = 0.5  # "near the object": within this share of the sure object's size (square root of its area)
ENCLOSED_SIZE = 0.002  # a grey floor's piece walled off by edges is sure object if at least this share of the image,
ENCLOSED_SHADOW = 0.25  # ... less than this share of it in shadow,
ENCLOSED_LEVEL = 0.85  # ... and its median brightness at least this share of the floor's local level around it
# ... also where the edges leave a gap up to twice this many pixels wide (enclosed). Census of the RGB photos of
# seeds 25-44 (session 54): the first reading's IoU with the truth 0.525 -> 0.930 on 44/22, 0.629 -> 0.945 on 35/0,
# 0.051 -> 0.861 on 37/6, 0.578 -> 0.551 on 25/9; two more changed by less than 0.06; 398 of 404 unchanged.
# Those six fitted: 44/22 74.6 -> 1.7 degrees (a success), 35/0 1.1 -> 4.0 (one still), the other four as before.
ENCLOSED_GAP = 1
FAR_SHARE = 0.5  # a piece of floor cut off by edges (FLOOR_EDGE) stays background if this share of it is not near
SILHOUETTE_BAND = 0.12  # around a predicted silhouette, the band a mask decides: this share of its size
IN_FRONT_REACH = 0.03  # in_front: a piece reaching beyond the silhouette by this share of its area (pixels)
PRIOR_ODDS = 3.0  # a band pixel goes against the silhouette only if the other side's colour is this much nearer
OCCLUDER_AWAY = 2.0  # covered_by_front: what stands in front is sampled this many band widths from the silhouette
OCCLUDER_NEAR = 0.08  # ... and followed, outside the silhouette, through pixels this close to its colours (RGB)
PALETTE_MARGIN = 0.05  # ... leaving out samples this close to one of the object's own colours (RGB)
MIN_FRONT_SAMPLES = 5  # ... and finds nothing with fewer such samples
PALETTE_SAMPLES = 300  # object_palette and covered_by_front: colours kept (at random, seeded) for nearest neighbours
KEEP_BLOBS = 0.2  # blobs at least this share of the biggest are kept
# ... and on a grey floor, the blobs within NEAR_BLOBS of the biggest's size (the square root of its area) of it too:
# a grey teapot's shaded body matches the floor, and its bright spout or handle beyond it is a small blob of its own
# (the spout of 49/22 0.26 of the body's size away, 47/16's handle 0.05), dropped as noise, and the fit turned the
# teapot to put its spout elsewhere (43.4 and 175.0 degrees off). On the 526 RGB photos of seeds 25-50 (session
# 59) the kept blobs changed 67 photos' readings (27 first masks: IoU with the truth 11 up by 0.02 or more, 7
# down); fitted as the README runs it, 49/22 43.4 -> 4.1 degrees and 47/16 175.0 -> 13.4, none of the 67 lost.
NEAR_BLOBS = 0.3
# A blob at least this share of the shorter side from the rest of its mask stands apart (apart_blobs). On the RGB
# photos of seeds 25-42 the pieces of one object that a mask split lay 0.028-0.049 apart (26/4, 36/19, 37/6),
# and 6 photos held a blob that is no part of it 0.17-0.35 away (4 more, 0.026-0.095); in the distractor probe
# (seeds 60 and 61) the things beside the object lay 0.06-0.38 away, 4 of 17 nearer than this.
BLOBS_APART = 0.1
MIN_SPECK = 0.0005  # smaller blobs are specks (share of the image)
SAME_READING = 0.97  # floor_readings: a reading whose IoU with an earlier one is at least this is that one
MAX_HOLE = 0.001  # holes smaller than this share of the image are filled


def border_width(H: int, W: int) -> int:
    """The border band's width in pixels (BORDER_BAND of the shorter side, at least 2)."""
    return max(2, int(round(BORDER_BAND * min(H, W))))


def border_band(H: int, W: int) -> np.ndarray:
    band = border_width(H, W)
    border = np.zeros((H, W), bool)
    border[:band] = border[-band:] = True
    border[:, :band] = border[:, -band:] = True
    return border


def biggest_blobs(mask: np.ndarray, near: float = 0.0) -> np.ndarray:
    """The blobs of mask that are at least KEEP_BLOBS of the biggest, and those within `near` times the biggest's
    size (the square root of its area) of it, specks removed."""
    labels = measure.label(mask)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= KEEP_BLOBS * sizes.max()
    if near > 0:
        biggest = labels == int(np.argmax(sizes))
        close = ndimage.distance_transform_edt(~biggest) <= near * np.sqrt(sizes.max())
        keep[np.unique(labels[close])] = True
    return (keep & (sizes > MIN_SPECK * mask.size))[labels]


def apart_blobs(mask: np.ndarray, gap: float = BLOBS_APART) -> list[np.ndarray]:
    """The blobs of a mask that stand apart from the rest of it, at least `gap` of the image's shorter side
    away (none if the mask is one blob): something else on the table beside the object, a mug or a box, is
    as unlike the floor as the object, and its blob stays in the mask (clean keeps blobs KEEP_BLOBS of the
    biggest); which blob is the object's, the mesh tells (posefit.readings)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count < 2:
        return []
    apart = []
    for j in range(1, count + 1):
        blob = labels == j
        if ndimage.distance_transform_edt(~blob)[mask & ~blob].min() >= gap * min(mask.shape):
            apart.append(blob)
    return apart


def clean(mask: np.ndarray, near: float = 0.0) -> np.ndarray:
    """Specks removed, the biggest blobs kept (and those `near` the biggest: biggest_blobs), holes smaller than
    MAX_HOLE of the image filled."""
    mask = biggest_blobs(mask, near)
    with warnings.catch_warnings():  # scikit-image 0.26 renames the size argument; both mean the same here
        warnings.simplefilter("ignore", FutureWarning)
        return morphology.remove_small_holes(mask, int(MAX_HOLE * mask.size))


FLAT = 1.0 / 255  # a border whose pixels all lie this close to one colour is a render's flat backdrop, not a photo
SMOOTHING = 1.2  # pixels: the Gaussian that averages a photo's sensor noise out of its colours


def _spread(rgb: np.ndarray, border: np.ndarray) -> float:
    """How much the border's pixels vary: the 90th percentile of their largest channel difference from its median."""
    pixels = rgb[border]
    return float(np.percentile(np.abs(pixels - np.median(pixels, 0)).max(-1), 90))


def smoothed(rgb: np.ndarray, sigma: float = SMOOTHING) -> np.ndarray:
    """The (H, W, 3) photo's colours with its sensor noise and JPEG blocks averaged out (a Gaussian, sigma
    pixels, each channel)."""
    return np.stack([ndimage.gaussian_filter(rgb[..., c], sigma) for c in range(3)], -1)


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours' chromaticity: each divided by its sum, so that a lit and a shaded side of one paint
    have about one (their r + g + b is 1 but for the darkest pixels)."""
    return rgb / (rgb.sum(-1, keepdims=True) + 6e-3)


def gradient(rgb: np.ndarray) -> np.ndarray:
    """How steeply the (H, W, 3) photo's colours change at each pixel: the sum of its channels' Sobel magnitudes."""
    return sum(filters.sobel(ndimage.gaussian_filter(rgb[..., c], 0.5)) for c in range(3))


def strong_edges(gradient: np.ndarray, factor: float = STRONG_EDGE, low: float | None = None) -> np.ndarray:
    """Pixels on (or next to) a strong edge: a gradient `factor` times the border's 90th percentile, its noise
    (at most NOISE_SIDES times the median of the sides' own: a side along which two surfaces meet is no noise);
    with `low`, also the pixels joined to one through gradients at least `low` times it (hysteresis: an
    outline that fades for a few pixels, where a white object's shaded side meets a grey floor, stays whole,
    while the noise's isolated edges stay out)."""
    H, W = gradient.shape
    band = border_width(H, W)
    sides = [gradient[:band], gradient[-band:], gradient[:, :band], gradient[:, -band:]]
    noise = min(float(np.percentile(gradient[border_band(H, W)], 90)),
                NOISE_SIDES * float(np.median([np.percentile(side, 90) for side in sides])))
    noise = max(noise, 1e-6)
    if low is None:
        edges = gradient > factor * noise
    else:
        edges = filters.apply_hysteresis_threshold(gradient, low * noise, factor * noise)
    return ndimage.binary_dilation(edges, iterations=1)


def edge_supported(sure_object: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Step 4: sure_object without its pieces that no edge surrounds.

    A lamp's bright patch on a grey floor is brighter than any of the
    border's floor, so step 3 takes it for the object (on the tuning photos
    it was as big as the object and joined to it, and pulled the pose
    there); its brightness falls off smoothly, while the object's outline
    is a strong edge. So the sure object is cut along the strong edges,
    and a piece keeps its place only if at least EDGE_SUPPORT of its rim
    (the pixels within two of it) lie on one.
    """
    pieces, count = ndimage.label(sure_object & ~strong)
    if count == 0:
        return sure_object
    # Each rim pixel counts for the piece with the highest label within two pixels of it.
    near = ndimage.maximum_filter(pieces, size=5)
    rim = (pieces == 0) & (near > 0)
    on_edge = np.bincount(near[rim], weights=strong[rim], minlength=count + 1)
    total = np.bincount(near[rim], minlength=count + 1)
    smooth = on_edge < EDGE_SUPPORT * np.maximum(total, 1)
    smooth[0] = False
    return sure_object & ~smooth[pieces]


def floor_cut_at_edges(background_mask: np.ndarray, sure_object: np.ndarray, strong: np.ndarray,
                       shadow: np.ndarray) -> np.ndarray:
    """Step 4, the floor: background_mask cut along the strong edges into pieces; a piece that reaches the
    image's border, lies mostly away from the sure object (beyond NEAR_OBJECT of its size, the square root
    of its area) or mostly in `shadow` (darker than any of the border) stays background; the others, such
    as a grey object's shaded side inside its outline, are left to the watershed. (A flood of the whole
    floor from the border, stopped at strong edges, was tried: the floor's own texture and noise cut it
    into pieces that then passed for the object; and a hard shadow's edge is as strong as the object's.)"""
    if not sure_object.any():
        return background_mask
    H, W = background_mask.shape
    far = ndimage.distance_transform_edt(~sure_object) > NEAR_OBJECT * np.sqrt(sure_object.sum())
    pieces, count = ndimage.label(background_mask & ~strong)
    sizes = np.maximum(np.bincount(pieces.ravel(), minlength=count + 1), 1)

    def share(where: np.ndarray) -> np.ndarray:  # of each piece's pixels
        return np.bincount(pieces.ravel(), weights=where.ravel(), minlength=count + 1) / sizes

    kept = (share(far) >= FAR_SHARE) | (share(shadow) >= FAR_SHARE)
    kept[np.unique(pieces[border_band(H, W)])] = True
    kept[0] = False
    # The strong edges' own pixels away from the object or in shadow stay background too.
    return background_mask & (kept[pieces] | ((far | shadow) & (pieces == 0)))


def enclosed(background_mask: np.ndarray, edges: np.ndarray, shadow: np.ndarray,
             relative_brightness: np.ndarray) -> np.ndarray:
    """Step 4 on a grey floor: the pieces of background_mask that `edges` wall off from the image's border,
    at least ENCLOSED_SIZE of the image, not mostly in `shadow`, and not darker than ENCLOSED_LEVEL of the
    floor around them (`relative_brightness`: brightness / local_level), taken for sure object.

    A white or grey object's body on a grey floor matches the floor's colour and brightness, so steps 2-3
    give it to the backdrop and leave at most its highlights as sure object; the watershed from those
    then loses the body (on the tuning photos several grey teapots' first masks had IoU 0-0.4). Its
    outline walls it off; a shadow's piece is darker than the floor around it.

    An outline may fade for a pixel or two where the body's shaded side meets the floor (44/22: a white
    teapot's lower half reached the floor through one such gap and was lost), so the pieces are also sought
    with necks up to 2 ENCLOSED_GAP pixels wide cut (the backdrop opened by ENCLOSED_GAP pixels), each grown
    back by as much within it. Both kinds are kept: opened, a body cut by its texture's edges into small
    pieces loses some of them.
    """
    region = background_mask & ~edges
    walled_off = _walled_off(region, shadow, relative_brightness)
    opened = ndimage.binary_opening(region, structure=np.ones((3, 3)), iterations=ENCLOSED_GAP)
    behind_gap = ndimage.binary_dilation(_walled_off(opened, shadow, relative_brightness),
                                         structure=np.ones((3, 3)), iterations=ENCLOSED_GAP) & region
    return walled_off | behind_gap


def _walled_off(region: np.ndarray, shadow: np.ndarray, relative_brightness: np.ndarray) -> np.ndarray:
    """enclosed's pieces of `region` (H, W) bool: not reaching the border, big enough, lit enough."""
    H, W = region.shape
    pieces, count = ndimage.label(region)
    if count == 0:
        return np.zeros((H, W), bool)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    dark = np.bincount(pieces.ravel(), weights=shadow.ravel(), minlength=count + 1) / np.maximum(sizes, 1)
    inside = (sizes >= ENCLOSED_SIZE * H * W) & (dark < ENCLOSED_SHADOW)
    inside[np.unique(pieces[border_band(H, W)])] = False
    inside[0] = False
    candidates = np.flatnonzero(inside)
    if len(candidates):
        inside[candidates] = np.asarray(ndimage.median(relative_brightness, pieces, candidates)) >= ENCLOSED_LEVEL
    return inside[pieces]


def watershed(gradient: np.ndarray, sure_object: np.ndarray, sure_background: np.ndarray) -> np.ndarray:
    """The object's pixels: the unsure ones go to whichever sure region floods them first on `gradient`, so
    that the boundary falls on its ridges (the strongest edges between the two)."""
    markers = np.zeros(sure_object.shape, np.int32)
    markers[sure_background] = 1
    markers[sure_object & ~sure_background] = 2
    return segmentation.watershed(gradient, markers) == 2


RENDER_TOLERANCE = 24 / 255  # a clean render's object differs from its flat backdrop by more than this


def clean_render_mask(rgb: np.ndarray, background=None) -> np.ndarray:
    """A noiseless image (a render on a flat backdrop): the object is what differs from the backdrop's colour
    (the border's median, or `background`, 0-255) by more than RENDER_TOLERANCE in some channel; on pure
    white, the book's rule: every pixel that is not pure white."""
    if background is None:
        colour = np.median(np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]]), axis=0)
    else:
        colour = np.asarray(background, np.float32) / 255.0
    if (colour >= 1.0).all():
        return rgb.max(-1) != 1
    return np.abs(rgb - colour).max(-1) > RENDER_TOLERANCE


def is_photo(rgb: np.ndarray) -> bool:
    """A photo (its backdrop varies along the border), not a clean render on a flat backdrop."""
    return _spread(rgb, border_band(*rgb.shape[:2])) >= FLAT


def local_level(values: np.ndarray) -> np.ndarray:
    """The (H, W) values' local level: their median over a window LOCAL_WINDOW of the shorter side (taken at
    an eighth of the size: the level is smooth, and at a quarter the median cost about 40 ms a photo). On a floor,
    the level follows a lamp's bright patch and the fall-off of the light, which a single range of
    brightness for the whole floor cannot; an object smaller than the window stands out of it."""
    H, W = values.shape
    small = values[::8, ::8]
    size = max(3, int(round(LOCAL_WINDOW * min(H, W) / 8)))
    level = ndimage.median_filter(small, size=size, mode="nearest")
    return ndimage.zoom(level, (H / small.shape[0], W / small.shape[1]), order=1, grid_mode=True,
                        mode="nearest")[:H, :W]


class Backdrop(NamedTuple):
    """What `backdrop` finds in a photo, before the edges decide."""

    background: np.ndarray  # (H, W) bool: sure background
    sure_object: np.ndarray  # (H, W) bool: sure object
    grey: bool  # the floor is grey: its hue says nothing, and edges must part the object from it


def backdrop(rgb: np.ndarray, background=None, floor: int | None = None) -> Backdrop | None:
    """Steps 1-3 for an (H, W, 3) photo in [0, 1]: sure background, sure object, and whether the floor is grey.

    background: the backdrop's colour (0-255) if known, else learnt from the border.
    floor: which of the border's surfaces is the floor (0 to SURFACES - 1); None: the one that holds most of
    the border. None is returned if there is no such surface.
    """
    H, W, _ = rgb.shape
    border = border_band(H, W)
    # A photo's colours are smoothed before they are compared (sensor noise, JPEG blocks).
    smooth = smoothed(rgb)
    brightness = smooth.mean(-1) + 2e-3
    chroma = chromaticity(smooth)[..., :2]
    if background is not None:
        labels = np.zeros(int(border.sum()), int)
        colours = [np.asarray(background, np.float64) / 255.0]
    else:
        features = np.concatenate([chroma[border] * 10, np.log(brightness[border])[:, None]], 1)
        with warnings.catch_warnings():  # a cluster may come out empty on a plain backdrop: harmless
            warnings.simplefilter("ignore", UserWarning)
            _, labels = kmeans2(features, SURFACES, minit="++", seed=0)
        colours = [np.median(smooth[border][labels == k], 0) if (labels == k).any() else None
                   for k in range(SURFACES)]
    counts = np.bincount(labels, minlength=len(colours))
    usable = [colour is not None and count >= 0.03 * len(labels) for colour, count in zip(colours, counts, strict=True)]
    floor = int(np.argmax(counts)) if floor is None else floor
    if floor >= len(colours) or not usable[floor]:
        return None
    border_points = np.argwhere(border)
    background_mask = np.zeros((H, W), bool)
    for k, colour in enumerate(colours):
        if not usable[k]:
            continue
        members = labels == k
        direction = colour / max(float(np.linalg.norm(colour)), 1e-6)
        along = smooth @ direction  # the surface's colour, brighter or darker: a lamp, a shadow
        # Off the surface's colour, two ways, each against its spread on the border: the chromaticity
        # (what a light or dark patch of the same surface keeps) and the RGB residual (what a dark,
        # noisy pixel keeps); the backdrop must match both.
        surface_chroma = chromaticity(colour)[:2]
        off_chroma = np.sqrt(((chroma - surface_chroma) ** 2).sum(-1))
        off_rgb = np.linalg.norm(smooth - along[..., None] * direction, axis=-1)
        chroma_tolerance = CHROMA_TOLERANCE * np.percentile(off_chroma[border][members], 75)
        rgb_tolerance = CHROMA_TOLERANCE * np.percentile(off_rgb[border][members], 75)
        distance = np.maximum(off_chroma / np.clip(chroma_tolerance, MIN_CHROMA_TOLERANCE, MAX_CHROMA_TOLERANCE),
                              off_rgb / np.clip(rgb_tolerance, MIN_RGB_TOLERANCE, MAX_RGB_TOLERANCE))
        low, high = np.percentile(along[border][members], [1, 99])
        if k == floor:
            # How far from the floor's colour (another surface counts only where it reaches). A shadow is lit
            # by other light than the lamp's (the sky's, the room's), whose colour moves the floor's
            # chromaticity beyond the border's spread, but by a fraction of the floor's own saturation; an
            # object of another colour (white, black, grey) moves it by about all of it. So a darker pixel
            # that near the floor's colour is no sure object: the edges decide it (on the tuning photos the
            # shadows of a spout and a handle became the object's, and the fits turned 30-90 degrees).
            saturation = float(np.linalg.norm(surface_chroma - 1 / 3))
            shade = (along < low) & (off_chroma < SHADOW_CHROMA * saturation)
            score = np.where(shade, np.minimum(distance, 1.0), distance)
        lowest = low * SHADOW_RATIO if k == floor else low / 1.05
        matches = (distance <= 1) & (along <= high * 1.05) & (along >= lowest)
        if k == floor:
            grey = bool(np.abs(direction - 1 / np.sqrt(3)).max() < GREY)
            if grey:
                # A white object on a grey floor matches its colour and lies within its range of brightness,
                # but is brighter than the floor around it: a pixel well above the floor's local level is no
                # sure backdrop (the border's range spans a lamp's patch; the local level follows it).
                level = local_level(along)
                matches &= along <= LOCAL_MATCH * level
                brighter = along > OBJECT_BRIGHTNESS * level
            else:
                brighter = along > OBJECT_BRIGHTER_THAN_BORDER * high
        # Background: matching pixels connected to this surface's own border pixels.
        regions, _ = ndimage.label(matches)
        seeds = np.zeros((H, W), bool)
        seeds[tuple(border_points[members].T)] = True
        reached = np.unique(regions[seeds & matches])
        background_mask |= np.isin(regions, reached[reached > 0])
    sure_object = (score > OBJECT_CHROMA) | (brighter & (grey | (score > 1.0)))
    return Backdrop(background_mask | border, sure_object & ~background_mask & ~border, grey)


def photo_mask(rgb: np.ndarray, background=None, model: Backdrop | None = None,
               floor: int | None = None) -> np.ndarray | None:
    """The object's pixels in an (H, W, 3) photo with values in [0, 1]; background: its colour (0-255) if known.
    model: what `backdrop` returned for this photo, if it was already found (the tracker finds it ahead).
    floor: which of the border's surfaces the object stands on (`backdrop`; None if there is no such one)."""
    if not is_photo(rgb):
        return clean_render_mask(rgb, background)
    model = model if model is not None else backdrop(rgb, background, floor)
    if model is None:
        return None
    background_mask, sure_object, grey = model
    steepness = gradient(rgb)
    brightness = ndimage.gaussian_filter(rgb.mean(-1), SMOOTHING)
    relative = steepness
    if grey:
        # Edges are told from noise by the gradient relative to the square root of the light (a photo's noise
        # grows with it: in a lamp's bright patch on a grey floor the noise alone made edges enough to keep
        # the patch, lit in the lamp's hue, as object).
        level = local_level(brightness)
        relative = steepness / np.sqrt(level + 0.01)
    strong = strong_edges(relative)
    near = NEAR_BLOBS if grey else 0.0  # (a grey object's bright thin parts beyond its shaded body)
    sure_object = biggest_blobs(edge_supported(sure_object, strong), near)
    # Darker than (nearly) all of the border: a shadow, whose edge may be as strong as the object's.
    shadow = brightness < np.percentile(brightness[border_band(*brightness.shape)], 1) / 1.05
    floor_edges = strong_edges(relative, FLOOR_EDGE, FLOOR_EDGE_LOW if grey else None)
    if grey:
        inside = enclosed(background_mask, floor_edges, shadow, brightness / level)
        sure_object, background_mask = sure_object | inside, background_mask & ~inside
    # The floor is cut along fainter edges than the sure object: a grey object's shaded side is parted from a
    # grey floor by an outline fainter than its lit side's, and a cut too many only leaves floor to the
    # watershed (the sure object's pieces keep STRONG_EDGE: a lamp's patch fades through the noise's edges).
    background_mask = floor_cut_at_edges(background_mask, sure_object, floor_edges, shadow)
    # The sure regions are kept off the boundary, which the edges then decide.
    sure_background = ndimage.binary_erosion(background_mask, iterations=1) | border_band(*rgb.shape[:2])
    sure_object = ndimage.binary_erosion(sure_object, iterations=2)
    if not sure_object.any():
        return np.zeros(rgb.shape[:2], bool)
    return clean(watershed(steepness, sure_object, sure_background), near)


def floor_readings(rgb: np.ndarray, background=None) -> list[np.ndarray]:
    """The photo's masks with each surface of its border taken for the floor in turn: the usual reading (the
    surface that holds most of the border) first, then the others that differ from every reading before
    (IoU below SAME_READING: on the benchmark's photos about 40% of the others are within it, and each costs
    the grid a search for something in front).

    The surface that holds most of the border is not always the one the object stands on: seen from low,
    a light grey wall or sky behind a white teapot fills the top of the picture, and taken for the floor it
    takes the teapot in too (its shadow allowance spans the grey floor and the grey teapot). Which reading
    is the object's, the mesh tells (posefit.readings.choose_reading).
    """
    readings = [photo_mask(rgb, background)]
    if background is not None or not is_photo(rgb):
        return readings  # one backdrop colour: one surface
    for k in range(SURFACES):  # the usual floor's reading comes again, and is given once
        mask = photo_mask(rgb, floor=k)
        if mask is not None and all(iou(mask, other) < SAME_READING for other in readings):
            readings.append(mask)
    return readings


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1 for two empty ones)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def outline_on_edges(rgb: np.ndarray, mask: np.ndarray) -> float:
    """The share of the mask's outline that lies on the photo's strong edges (an object's outline does; the
    fall-off of a lamp's patch or a shadow does not)."""
    outline = mask & ~ndimage.binary_erosion(mask)
    if not outline.any():
        return 0.0
    return float(strong_edges(gradient(rgb))[outline].mean())


def outline_weights(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """1 everywhere but within `width` pixels of the mask's outline, 0 there: in a photo the outline is
    uncertain by about a pixel (anti-aliasing, blur, JPEG, a boundary pixel that mixes the object's and the
    floor's colours), and the bias is not random: on the lit side the mixed pixels go to the object, on the
    shaded side to the floor, as if the mask were shifted. Fitted to that, a pose turns a little every
    frame and the turns add up; with the outline left out, the pixels on either side still place it."""
    band = ndimage.binary_dilation(mask, iterations=width) & ~ndimage.binary_erosion(mask, iterations=width)
    return (~band).astype(np.float32)


def block_means(blocks: np.ndarray) -> np.ndarray:
    """blocks (h, 2, w, 2, c) float32: each 2x2 block's mean (h, w, c), blocks.mean((1, 3))'s numbers (summed in
    its order) at a sixth of its cost."""
    return (blocks[:, 0, :, 0] + blocks[:, 0, :, 1] + blocks[:, 1, :, 0] + blocks[:, 1, :, 1]) / np.float32(4)


def backdrop_behind(rgb: np.ndarray, known: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """The image (H, W, 3) with the pixels not `known` to be backdrop (the object, and what is unsure around
    it) filled from the known ones around them: the floor and its shadow as they would look without the
    object, what a render of the object is composited over. Normalised Gaussian convolution at widening
    scales (sigma, 2 sigma, ... pixels), at half the resolution (the fill is smooth; a tracker's frame
    pays 2 ms for it instead of 7)."""
    H, W, _ = rgb.shape
    out = rgb.astype(np.float32).copy()
    if known.all():
        return out
    if not known.any():
        out[:] = 1.0
        return out
    # Half size: a 2x2 block is known if all of it is.
    h, w = (H + 1) // 2, (W + 1) // 2
    padded = np.pad(known, ((0, 2 * h - H), (0, 2 * w - W)), mode="edge")
    small_known = padded.reshape(h, 2, w, 2).all(axis=(1, 3))
    small = block_means(np.pad(out, ((0, 2 * h - H), (0, 2 * w - W), (0, 0)), mode="edge").reshape(h, 2, w, 2, 3))
    filled, done = small.astype(np.float64), small_known.copy()
    scale = sigma / 2
    while not done.all() and scale < 4 * max(h, w):
        weight = done.astype(np.float64)
        total = ndimage.gaussian_filter(weight, scale)
        spread = np.stack([ndimage.gaussian_filter(filled[..., c] * weight, scale) for c in range(3)], -1)
        fill = ~done & (total > 1e-3)
        filled[fill] = spread[fill] / total[fill, None]
        done |= fill
        scale *= 2
    big = np.repeat(np.repeat(filled, 2, 0), 2, 1)[:H, :W]
    out[~known] = big[~known]
    return out


def _nearest_squared_distance(points: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Each point's squared distance to its nearest sample (scipy's k-d tree, in float64)."""
    distance, _ = cKDTree(samples.astype(np.float64)).query(points, k=1)
    return distance**2


def band_width(silhouette: np.ndarray, margin: float = SILHOUETTE_BAND) -> int:
    """The half-width in pixels of the band around a silhouette: `margin` of its size (the square root of its
    area), at least a pixel."""
    return max(1, int(round(margin * np.sqrt(silhouette.sum()))))


def in_front(mask: np.ndarray, background_mask: np.ndarray, silhouette: np.ndarray, margin: float = SILHOUETTE_BAND,
             reach: float = IN_FRONT_REACH) -> np.ndarray:
    """The pixels (H, W) bool of whatever may stand in front of the object: the connected pieces of the
    pixels neither in `mask` (the object's, refine_with_silhouette) nor in `background_mask` (what the
    backdrop model is sure of, `backdrop`) that touch the predicted `silhouette` and reach beyond it (beyond
    refine_with_silhouette's band, `margin` of its size) by at least `reach` of its area. A post or a box
    between the camera and the object is such a piece: the refined mask gives its pixels to the background
    (they are nearer the colours around the object than the object's), and a silhouette fitted to that mask
    shrinks away from it, turning the object a little more each frame it stays (on the tuning sequence
    with a post, 15 degrees over eight frames). The rule is crude: the object's own deep shadow, or the
    line where a wall meets the floor, can pass for such a piece where it meets the silhouette; there the
    prediction is kept for a few pixels."""
    unknown = ~mask & ~background_mask
    if not unknown.any() or not silhouette.any():
        return np.zeros_like(mask)
    width = band_width(silhouette, margin)
    near = ndimage.binary_dilation(silhouette, iterations=width)
    labels, count = ndimage.label(unknown, structure=np.ones((3, 3)))
    beyond = np.bincount(labels[unknown & ~near], minlength=count + 1)
    touching = np.bincount(labels[unknown & silhouette], minlength=count + 1)
    pieces = (beyond >= reach * silhouette.sum()) & (touching > 0)
    pieces[0] = False
    return pieces[labels]


def _smoothed_around(rgb: np.ndarray, region: np.ndarray | None, sigma: float) -> np.ndarray:
    """The (H, W, 3) colours each smoothed by a Gaussian (scipy's, as the whole image's) where `region` (H, W)
    bool is true (all of it: None), zero beyond: only the box around the region and the filter's reach is
    filtered (a tracker's frame filtered all of it, 1.5 ms, for the pixels around the object). The region's
    numbers are those of the whole image's filter, bit for bit: each pixel's sum runs over the same
    neighbours (the box's own edges lie the reach away, or on the image's, where both reflect alike)."""
    if region is None or not region.any():
        return smoothed(rgb, sigma)
    reach = int(4.0 * sigma + 0.5)  # scipy's radius for its default truncate (4 standard deviations)
    rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
    y0, y1 = max(0, rows[0] - reach), min(rgb.shape[0], rows[-1] + 1 + reach)
    x0, x1 = max(0, cols[0] - reach), min(rgb.shape[1], cols[-1] + 1 + reach)
    filtered = smoothed(rgb[y0:y1, x0:x1], sigma)
    out = np.zeros(rgb.shape, dtype=filtered.dtype)
    out[y0:y1, x0:x1] = filtered
    return out


def refine_with_silhouette(rgb: np.ndarray, silhouette: np.ndarray, margin: float = SILHOUETTE_BAND,
                           background_mask: np.ndarray | None = None, samples: int = 400) -> np.ndarray:
    """The object's pixels found around a fitted (or predicted) silhouette.

    Well inside it (the silhouette eroded by the margin) is the object, well outside (dilated by it) the
    background; a pixel of the band between goes to whichever of the two its colour is nearer to (its
    nearest neighbour among `samples` pixels of each, colours lightly smoothed): the object's own colours,
    black patches and all, against the floor's and the shadow's right there. margin: the band's half-width
    as a share of the silhouette's size (the square root of its area). background_mask: pixels the backdrop
    model (`backdrop`) is sure of, background outside the silhouette (the shadow by the feet).
    """
    H, W = silhouette.shape
    if not silhouette.any():
        return silhouette
    width = band_width(silhouette, margin)
    inside = ndimage.binary_erosion(silhouette, iterations=width)
    outside = ~ndimage.binary_dilation(silhouette, iterations=width)
    if not inside.any():  # a thin silhouette: its own pixels stand for the object's colours
        inside = silhouette
    if background_mask is not None:
        outside = outside | (background_mask & ~silhouette)
    band = ~inside & ~outside
    ring = outside & ndimage.binary_dilation(silhouette, iterations=3 * width)  # the background right there
    smooth = _smoothed_around(rgb, (inside | band | ring) if ring.any() else None, 0.7)
    rng = np.random.default_rng(0)

    def sample(region):
        colours = smooth[region]
        return colours[rng.choice(len(colours), min(samples, len(colours)), replace=False)] if len(colours) else colours

    object_colours, background_colours = sample(inside), sample(ring if ring.any() else outside)
    mask = inside.copy()
    if band.any() and len(background_colours):
        colours = smooth[band].astype(np.float64)
        nearest_object = _nearest_squared_distance(colours, object_colours)
        nearest_background = _nearest_squared_distance(colours, background_colours)
        # The prior: where the silhouette says object, the background must be clearly nearer, and back.
        bias = np.where(silhouette[band], PRIOR_ODDS, 1.0 / PRIOR_ODDS)
        mask[band] = nearest_object < bias * nearest_background
    return clean(mask)


def _some(colours: np.ndarray, count: int = PALETTE_SAMPLES, seed: int = 0) -> np.ndarray:
    """At most `count` of the colours, drawn at random (seeded) without replacement."""
    if len(colours) <= count:
        return colours
    return colours[np.random.default_rng(seed).choice(len(colours), count, replace=False)]


def object_palette(rgb: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """The object's own colours as a frame shows them, (n, 3) float64: its pixels (the silhouette of its known
    pose, eroded by a pixel so that the outline's mix with the floor stays out), at most PALETTE_SAMPLES."""
    inside = ndimage.binary_erosion(silhouette, iterations=1)
    return _some(rgb[inside if inside.any() else silhouette].astype(np.float64))


def front_samples(rgb: np.ndarray, silhouette: np.ndarray, sure_object: np.ndarray, palette: np.ndarray,
                  margin: float = SILHOUETTE_BAND) -> tuple[np.ndarray, np.ndarray]:
    """covered_by_front's samples of what stands in front (H, W) bool, and the pixels away from the
    silhouette: the sure object OCCLUDER_AWAY band widths and more from it, less the object's own colours."""
    away = ~ndimage.binary_dilation(silhouette, iterations=int(OCCLUDER_AWAY * band_width(silhouette, margin)))
    front = sure_object & away
    if front.any() and len(palette):
        front[front] = off_the_palette(rgb[front], palette)
    return front, away


def off_the_palette(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Whether each colour (N, 3) lies farther than PALETTE_MARGIN (RGB) from every colour of the palette (M, 3,
    M > 0: object_palette's), as something in front of the object does and the object's own pixels do not."""
    return cKDTree(palette).query(colours.astype(np.float64), k=1)[0] > PALETTE_MARGIN


def covered_by_front(rgb: np.ndarray, silhouette: np.ndarray, sure_object: np.ndarray, expected: np.ndarray,
                     palette: np.ndarray, margin: float = SILHOUETTE_BAND) -> np.ndarray:
    """The pixels (H, W) bool of the silhouette that something in front of the object covers (a post).

    What stands in front is sampled away from the silhouette (OCCLUDER_AWAY
    band widths and more): the pixels the backdrop model is sure are no floor
    (`sure_object`), less those coloured like the object itself (within
    PALETTE_MARGIN of its `palette`, object_palette: a pose a few pixels off
    leaves some of the object outside its silhouette). A pixel of the
    silhouette is covered when its colour is nearer those samples than the
    object's `expected` colour anywhere within a pixel of it (the render at
    the pose, lit by the frame's light: a pose a pixel off moves the
    texture's patches by a pixel), and it is reached from the samples through
    such pixels (outside the silhouette: within OCCLUDER_NEAR of the
    samples' colours). Nothing is covered when there is no such sample (a
    post coloured like the object is not told from it here).
    """
    covered = np.zeros_like(silhouette)
    if not silhouette.any():
        return covered
    colours = rgb.astype(np.float64)
    front, away = front_samples(colours, silhouette, sure_object, palette, margin)
    if front.sum() < MIN_FRONT_SAMPLES:
        return covered
    H, W = silhouette.shape
    asked = front | silhouette | ~away  # the pixels a piece can hold (only their distances are needed)
    to_front = np.full((H, W), np.inf)
    to_front[asked] = cKDTree(_some(colours[front])).query(colours[asked], k=1)[0]
    padded = np.pad(expected.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    to_object = np.sqrt(np.min([((padded[i:i + H, j:j + W] - colours) ** 2).sum(-1)
                                for i in range(3) for j in range(3)], axis=0))
    like_front = np.where(silhouette, to_front < to_object, to_front < OCCLUDER_NEAR) & asked
    labels, _ = ndimage.label(like_front, structure=np.ones((3, 3)))
    reached = np.unique(labels[front & like_front])
    return np.isin(labels, reached[reached > 0]) & silhouette
