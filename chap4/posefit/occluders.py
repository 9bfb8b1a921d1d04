"""Something in front of the object: the piece of a photo's mask that a post or a box in front of it adds.

A post or a box in front of the object joins the photo's mask (it is not
the backdrop), and a silhouette fitted to the whole mask turns towards it.
The grid of views (posefit.initial) tells it: with that piece left out (and
the views scaled up to make up for the part of the object behind it), some
view explains the rest much better than any explains the whole mask; a
piece of the object itself (a cow's black patch) left out helps no view.

- `occluder_candidates`: the pieces tried, regions of one colour
  (scikit-image's felzenszwalb, `photo_regions`) joined with their
  neighbours of the same hue (`faces_of_one_hue`, `same_hue_around`).
- `parting_pieces`: what parts the mask, outside it: a post in front that the
  backdrop took, between two pieces of the object (candidates too).
- `in_front_piece`: the piece taken, if any, as care weights (0 on it) for
  the grid's scores and the fit's loss (or two pieces together, whose colours
  are not the rest's: `off_the_object`).
- `borrowed_piece`: a piece another reading of the photo found, left out of
  the chosen one too (posefit.readings).
- `unclaimed_pieces`: what another reading took for the object and the chosen
  one left to the backdrop beside it, offered to `borrowed_piece` in turn.
- `more_in_front`: with the piece taken left out, another that the grid
  tells in the same way (a second thing in front, a shadow).
- `own_part`: a plain object's piece in its own colours, which the short fit
  does not explain clearly better left out: the object's part (a teapot's
  handle), not something in front.
- `beyond_the_mask`: the piece taken, followed outside the mask, where the
  thing in front goes on and hides the object's part behind it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage import graph, segmentation

from posefit import initial, masks

# Something in front of the object (in_front_piece): a piece of the photo (a region of one colour, scikit-image's
# felzenszwalb) that holds between OCCLUDER_SHARE of the mask and reaches its outline is a candidate; the
# OCCLUDER_CANDIDATES largest are each left out of the grid's scores, and the one whose best score beats the
# whole mask's by OCCLUDER_GAIN (IoU) is taken. With it left out the object's hidden part is missing from the
# mask's area, so the views are also scored at initial.OCCLUDED_SCALES times the scale its area gives, each
# placed by the whole object's centroid (initial.hidden_centroid). A piece is a region with its neighbours of the
# same hue (faces_of_one_hue: a post's lit, shaded and top faces), which may hold up to OCCLUDER_SHARE[1] of the
# mask: a post or a box in front is often larger in the photo than the part of the object it leaves in view (the
# object at least three quarters seen, the thing in front reaching down to the floor): on seed 24 a yellow post held
# 0.73 of case 9's mask and a red box 0.77 of case 15's (their shaded faces and the shadows about them joined by
# hue), and the cows behind them ended 42 and 64 degrees off with the bound at half the mask (0.5; 0.45 before
# the faces were joined), 0.4 and 0.5 with it at 0.8.
OCCLUDER_SHARE = (0.04, 0.8)
# Something in front that the backdrop took and that parts the mask (parting_pieces): a region outside the mask
# that reaches two of its blobs, reaches beyond their bounding box (a post or a bar goes on past the object; a
# white teapot's shaded body between its lit pieces lies within it), is at most PARTING_AREA times the mask's
# area and holds at most PARTING_BORDER of the image's border band (the floor's regions hold most of it; a post's
# end a few hundredths). Fresh seed 92 case 3, a cow behind a black post on dark grey: the mask was the cow in two
# pieces, the fit took the smaller alone (108.5 degrees off); the post (1.04 times the mask, 0.06 of the border)
# left out, 1.7. Without the bounds the floor itself (95/6, 37 times the mask's area) and a white teapot's shaded
# body were taken, and 95/6 ended 57.0 degrees off (1.7 before).
PARTING_AREA = 2.0
PARTING_BORDER = 0.1
# ... reaching the mask's outline or within OCCLUDER_RIM pixels of it: felzenszwalb often gives an object's
# blended edge a region of its own, a rim between the bar in front and the backdrop (seed 10 case 15, a bar
# 34% of the mask, was no candidate with the outline itself; on 105 photos of seeds 0-9 this rim added three
# bars in front, and no piece of an unoccluded object).
OCCLUDER_RIM = 3
# What another reading took for the object and the chosen one leaves to the backdrop beside it (unclaimed_pieces):
# its pieces (connected) that reach within OCCLUDER_RIM pixels of the chosen mask and hold at least
# OCCLUDER_SHARE[0] of its area, if together they hold at most UNCLAIMED_CAP of it (more: another surface, a wall
# or the floor's far side, not a thing beside the object), and if their median chromaticity lies off the floor's
# around them (a ring UNCLAIMED_RING pixels wide, UNCLAIMED_RIM from them) by more than UNCLAIMED_CHROMA and more
# than masks.SHADOW_CHROMA times the floor's saturation: else they are the object's shadow (the colour readings
# took in shadows often: 16 pieces on seeds 52-55, 0.003-0.033 off their floor's chromaticity; left out, they
# loosened the fit, 54/16 1.0 -> 4.8 degrees). A post or a box in front of the object that the chosen reading
# (the mesh's outline) left out, and that no colour reading's grid told (the piece of it in their masks scored
# below their whole masks), was pushed out by the silhouette term with the object's part behind it (61/11, a cow
# behind a black box on terracotta, 0.095 off, 27.8 degrees; 61/15, a cow under a grey bar on beige, 0.054 off,
# 4.9 degrees and 8.1%).
UNCLAIMED_CAP = 1.5
UNCLAIMED_CHROMA = 0.04
UNCLAIMED_RIM, UNCLAIMED_RING = 3, 5
BORROW_INSIDE = 0.2  # borrowed_piece: a piece of another reading at most this much inside the chosen mask ...
BORROW_TOLERANCE = 0.005  # ... whose leaving out lowers the grid's best score by at most this
OCCLUDER_CANDIDATES = 3
# ... each grown into the mask's pixels of its hue within OCCLUDER_GROWTH pixels of it: felzenszwalb parts a
# post's or a bar's lit face from its shaded one, whose hue is the same (OCCLUDER_HUE_COS: the cosine between
# two chromaticities' offsets from grey) and its saturation often lower (pixels need at least
# OCCLUDER_SATURATION[1] of the piece's); left in the mask, the shaded face pulled the fit (seed 11 cases 15
# and 23, cows behind a red post, 71 and 130 degrees off). A piece less saturated than OCCLUDER_SATURATION[0] is not grown: a grey one has no
# hue to follow, and a white object's side takes the tint of a coloured floor's light (0.02-0.1 on seeds 7-11,
# where at 0.04 the growth took in more of a white teapot's shaded side; the painted posts and bars there are
# 0.13-0.31). The growth stays near the piece for the same reason.
OCCLUDER_GROWTH = 4
OCCLUDER_HUE_COS = 0.9
OCCLUDER_SATURATION = (0.1, 0.35)
OCCLUDER_GAIN = 0.05
# ... or, with a trial (posefit.search.trial_iou, a short fit), a candidate that the grid scores above the
# whole mask at all is taken if the trial's IoU with it left out beats the whole mask's trial by
# OCCLUDER_TRIAL_GAIN (the best such, of the OCCLUDER_TRIALS the grid scores best). The grid's views are 13
# degrees apart and 64 px wide, and its score of a mask varies by a few hundredths with what its views happen
# to match: a red bar across a teapot gained 0.030 on the grid (seed 17 case 20), as much as a piece of an
# unoccluded teapot's own body. Fitted, the mesh explains the rest of a mask much better without most things
# in front of the object (15 of 20 such pieces on seeds 13-17: +0.033 to +0.30) and hardly better without a
# piece of the object itself (at most +0.0296 there, of 25: the pixels left out no longer count either way).
OCCLUDER_TRIAL_GAIN = 0.03
OCCLUDER_TRIALS = 2  # candidates tried so, at most (a trial costs about a second)
# ... and when none is taken so, the two the grid scores best, left out together, if the grid scores them above
# the whole mask, the trial's IoU beats the whole mask's by OCCLUDER_PAIR_GAIN, and at least PAIR_OFF_OBJECT of
# their pixels lie off the rest of the mask's colours (off_the_object). A grey or white thing in front has faces
# of one colour lit differently, which no hue joins (faces_of_one_hue), and each face left out alone leaves the
# other to pull the fit: 67c/16 (seed 67's photos with the teapots painted, --teapot-colours), a red teapot
# behind a white bar, its top face alone +0.018, its side +0.009, both +0.082 (0.91 of them off the teapot's
# colours), 77.9 -> 5.5 degrees. The bars are higher than a single piece's: two pieces of an object left out
# together are explained better too (of the 277 RGB photos of seeds 52-67, 58/4, an unoccluded white teapot,
# +0.055, and 57/2 +0.040), but they have the object's colours (0.05 and 0.06 off them).
OCCLUDER_PAIR_GAIN = 0.05
PAIR_OFF_OBJECT = 0.5
# A plain object (the teapot: one colour, shaded) shows its own colours all over: a piece taken for something in
# front that has them (fewer than OWN_COLOURS of its pixels off the rest's, off_the_object; at least OWN_INSIDE of
# it inside the mask) is left out only if the short fit explains the rest clearly better without it (by
# OWN_TRIAL_GAIN, more than OCCLUDER_TRIAL_GAIN asks): else it is the object's own part (own_part). A white teapot
# on a grey floor whose mask lost its spout keeps its handle, which a body without it explains better; taken
# for something in front, it counted for nothing, and every turn of the body fitted alike (photo benchmark 78/2
# and 80/20: the handle 7% and 0% off the body's colours, the trial 0.047 and 0.035 better without it; fitted
# 110 and 128 degrees off, with it counted 0.4 and 0.5). An off-white bar across a white teapot (66/14) has its
# colours too, but no view of the teapot explains it: +0.127. On the RGB teapot photos of seeds 60-80 (a
# scratch census of search.start's choice, then fitted) it counts three more pieces: 70/6 and 73/16 (nothing in
# front; +0.057, +0.058; 1.1 -> 0.8 and 0.8 -> 0.8 degrees) and 68/22 (a wooden post 16% in front, its colours
# near the teapot's; +0.044; 3.7 -> 4.8 degrees).
OWN_COLOURS = 0.15
OWN_INSIDE = 0.5
OWN_TRIAL_GAIN = 0.08
# More than one piece (more_in_front): with the piece taken left out, each other candidate that is not mostly
# it (at most MORE_OVERLAP of its pixels in it) is left out too in turn, and the best is taken as well if the
# grid's best score beats the first piece's alone by OCCLUDER_GAIN and a short fit's by OCCLUDER_TRIAL_GAIN (both
# asked: of the 80 photos of seeds 35-46 and the probes 60-62 that left a piece out, three had a second piece
# that gained the grid more than 0.05; two were pieces of the object (46/4, 60/15 of the distractor probe), whose
# trials gained 0.007 and 0.019; the third is 46/7, a cow behind a navy post with its shadow on green in the
# mask: the post taken, the shadow left out with it +0.087 on the grid, +0.102 in the trial).
MORE_OVERLAP = 0.5
# The piece taken, followed outside the mask (beyond_the_mask): a post whose top the mask took in has its body
# read as backdrop (it reaches the frame's border, and a border surface is the backdrop's), and the silhouette
# term pushed the object's part behind it out (42/8, a teapot behind a teal post, 8.4 degrees off; 45/11, a cow
# behind a yellow post, 122.5). Its pixels of the piece's hue, at least BEYOND_SATURATION of its saturation (a
# beige floor has a yellow post's hue at 0.4 of its saturation), connected to it, within initial.HIDDEN_REACH
# times the seen part's size of the mask (where the object's hidden part can lie), are left out too; unless they
# hold more than BEYOND_BORDER of the image's border band: then the floor has the piece's hue.
BEYOND_SATURATION = 0.5
BEYOND_BORDER = 0.15
SEGMENT_SCALE = 100.0  # felzenszwalb's scale (larger: larger regions) at the working size
MERGE_COLOUR = 0.06  # neighbouring regions whose mean colours (RGB in [0, 1]) are this close are merged


def borrowed_piece(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, cares: list,
                   best_score, whole: float | None = None) -> torch.Tensor | None:
    """The care weights of something in front of the object that another reading of the photo held (cares:
    each reading's, None where none) and this mask (H, W) leaves out, else None.

    The mesh's outline reading (posefit.outlines) follows the object's own edges, and leaves a post in front
    of it out of the mask, as the backdrop: the silhouette term would then push the object's part behind
    the post out of it (seed 10 case 15, a cow behind a bar, 7.6 degrees off). A colour reading that took
    the post in found it for what it is; its piece, if at most BORROW_INSIDE of it lies in this mask, is left
    out of this one's fit too, unless the grid then explains the mask worse. whole: the grid's best score of
    the mask as it is, if already found.
    """
    if whole is None:
        whole = best_score(*initial.score_grid(view_silhouettes, mask, rolls)[:2])
    best, best_value = None, whole - BORROW_TOLERANCE
    inside_mask = mask > 0.5
    for care in cares:
        if care is None:
            continue
        care = care.to(mask.device)
        piece = care < 0.5
        if (piece & inside_mask).sum() > BORROW_INSIDE * piece.sum():
            continue
        value = best_score(*initial.score_grid(view_silhouettes, mask, rolls, care=care,
                                               scales=initial.OCCLUDED_SCALES)[:2])
        if value >= best_value:
            best, best_value = care, value
    return best


def unclaimed_pieces(photo: np.ndarray, readings: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Care weights (H, W; 0 on the piece), one for each other of a photo's readings that took for the object
    pixels beside reading k's mask that k leaves to the backdrop: its pieces (connected) of those within
    OCCLUDER_RIM pixels of k's mask holding at least OCCLUDER_SHARE[0] of its area, if together at most
    UNCLAIMED_CAP of it and no shadow of the floor around them (UNCLAIMED_CHROMA). For borrowed_piece, which
    keeps one only if the grid explains k's mask as well without it: neither backdrop nor object for sure
    (something in front of the object, a thing beside it), such pixels are counted neither way."""
    chosen = readings[k].cpu().numpy() > 0.5
    near = ndimage.binary_dilation(chosen, iterations=OCCLUDER_RIM)
    area = int(chosen.sum())
    chroma = None  # (the photo's smoothed chromaticity, made once a piece needs the shadow test)
    cares = []
    for j, reading in enumerate(readings):
        if j == k:
            continue
        labels, count = ndimage.label((reading.cpu().numpy() > 0.5) & ~chosen)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        beside = np.zeros(count + 1, bool)
        beside[np.unique(labels[near])] = True
        kept = beside & (sizes >= OCCLUDER_SHARE[0] * area)
        kept[0] = False
        piece = kept[labels]
        if not piece.any() or piece.sum() > UNCLAIMED_CAP * area:
            continue
        if chroma is None:
            chroma = masks.chromaticity(masks.smoothed(photo))
        if not shadow_like(chroma, piece, chosen):
            cares.append(1.0 - torch.from_numpy(piece).float().to(readings[k].device))
    return cares


def shadow_like(chroma: np.ndarray, piece: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the piece's median chromaticity (chroma: posefit.masks.chromaticity) lies within UNCLAIMED_CHROMA,
    or within masks.SHADOW_CHROMA times the floor's saturation, of the floor's around the piece and the mask
    (H, W bool each): a shadow on the floor has the floor's chromaticity, darker."""
    both = piece | mask
    inner = ndimage.binary_dilation(both, iterations=UNCLAIMED_RIM)
    ring = ndimage.binary_dilation(inner, iterations=UNCLAIMED_RING) & ~inner
    if not ring.any():
        return True
    floor = np.median(chroma[ring], 0)
    off = float(np.linalg.norm(np.median(chroma[piece], 0) - floor))
    return off <= max(UNCLAIMED_CHROMA, masks.SHADOW_CHROMA * float(np.linalg.norm(floor - 1.0 / 3.0)))


def photo_regions(photo: np.ndarray) -> np.ndarray:
    """The photo's regions of one colour (labels, H x W): felzenszwalb's, neighbours of nearly one colour
    merged (felzenszwalb cut a plain bar in front of the object into five: its middle and its ends)."""
    regions = segmentation.felzenszwalb(photo, scale=SEGMENT_SCALE, sigma=0.8, min_size=20)
    return graph.cut_threshold(regions, graph.rag_mean_color(photo, regions), MERGE_COLOUR)


def occluder_candidates(photo: np.ndarray, mask: np.ndarray, regions: np.ndarray | None = None) -> list[np.ndarray]:
    """Pieces of the mask that may be something in front of the object: its regions of one colour
    (felzenszwalb on the photo), each with its neighbours of the same hue (faces_of_one_hue), that hold
    OCCLUDER_SHARE of the mask and reach its outline, or within
    OCCLUDER_RIM pixels of it (a thing in front of the object reaches beyond it), the OCCLUDER_CANDIDATES
    largest first, each with the pixels of its hue beside it (same_hue_around). regions: photo_regions(photo),
    if already found."""
    regions = photo_regions(photo) if regions is None else regions
    rim = mask & ~ndimage.binary_erosion(mask, iterations=OCCLUDER_RIM)
    area = int(mask.sum())
    chroma = masks.chromaticity(masks.smoothed(photo))
    pieces = []
    for group in faces_of_one_hue(regions, mask, chroma):
        piece = np.isin(regions, list(group)) & mask
        share = piece.sum() / max(area, 1)
        if OCCLUDER_SHARE[0] <= share <= OCCLUDER_SHARE[1] and (piece & rim).any():
            pieces.append((share, piece))
    pieces.sort(key=lambda item: -item[0])
    return [same_hue_around(chroma, mask, piece) for _, piece in pieces[:OCCLUDER_CANDIDATES]]


def parting_pieces(mask: np.ndarray, regions: np.ndarray | None = None, photo: np.ndarray | None = None
                   ) -> list[np.ndarray]:
    """Regions of one colour outside the mask (photo_regions) that part it: each reaches within OCCLUDER_RIM
    pixels of two or more of its blobs (none if it is one blob), reaches beyond the mask's bounding box (by more
    than OCCLUDER_RIM pixels), is at most PARTING_AREA times as large as the mask and holds at most PARTING_BORDER
    of the image's border band. A post in front of the object that the backdrop took for the floor (a dark post
    on a dark floor: a shadow's darkness) cuts the object's mask in two, and no view explains the two pieces
    apart; left out as care weights, the object behind it is explained whole. regions: photo_regions(photo), if
    already found."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count < 2:
        return []
    regions = photo_regions(photo) if regions is None else regions
    near = [ndimage.binary_dilation(labels == j, iterations=OCCLUDER_RIM) & ~mask for j in range(1, count + 1)]
    band = masks.border_band(*mask.shape)
    ys, xs = np.nonzero(mask)
    pieces = []
    for label in np.unique(regions[np.any(near, 0)]):
        piece = (regions == label) & ~mask
        if (sum(bool((piece & blob).any()) for blob in near) < 2 or piece.sum() > PARTING_AREA * mask.sum()
                or (piece & band).sum() > PARTING_BORDER * band.sum()):
            continue
        py, px = np.nonzero(piece)
        rim = OCCLUDER_RIM
        if (py.min() < ys.min() - rim or py.max() > ys.max() + rim or px.min() < xs.min() - rim
                or px.max() > xs.max() + rim):
            pieces.append(piece)
    return pieces


def faces_of_one_hue(regions: np.ndarray, mask: np.ndarray, chroma: np.ndarray) -> list[frozenset]:
    """The mask's regions (labels) with the neighbouring regions of their hue joined to them, and theirs in
    turn (frozensets of labels, each group once, in the order of its lowest label): the lit, the shaded and the top face of a post
    are regions of their own with one hue (seed 22 case 20: a yellow post's two faces were two candidates, and
    neither left out alone explained the rest). Hues as same_hue_around compares a pixel's with a piece's,
    each region's the median of its pixels in the mask; a region less saturated than OCCLUDER_SATURATION[0]
    joins nothing and is joined to nothing (a white object's side takes the tint of a coloured floor's light)."""
    labels = np.unique(regions[mask])
    hues = {label: np.median(chroma[(regions == label) & mask], 0) - 1.0 / 3.0 for label in labels}
    saturation = {label: float(np.linalg.norm(hue)) for label, hue in hues.items()}
    # Neighbouring labels: the pairs of different labels of the mask's pixels side by side.
    inside = np.where(mask, regions, -1)
    pairs = set()
    for a, b in ((inside[:, :-1], inside[:, 1:]), (inside[:-1], inside[1:])):
        touching = (a != b) & (a >= 0) & (b >= 0)
        pairs.update(zip(a[touching].tolist(), b[touching].tolist(), strict=True))

    def alike(a, b) -> bool:
        low, high = sorted((saturation[a], saturation[b]))
        return (low >= OCCLUDER_SATURATION[0] and low >= OCCLUDER_SATURATION[1] * high
                and float(hues[a] @ hues[b]) >= OCCLUDER_HUE_COS * low * high)

    # The neighbours of the neighbours, and so on: the connected components of the graph of alike neighbours.
    index = {label: k for k, label in enumerate(labels.tolist())}
    edges = np.array([(index[a], index[b]) for a, b in pairs if alike(a, b)], dtype=np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(labels),) * 2)
    _, component = csgraph.connected_components(graph, directed=False)
    return [frozenset(labels[component == c].tolist()) for c in dict.fromkeys(component.tolist())]


def of_its_hue(chroma: np.ndarray, piece: np.ndarray, least: float) -> np.ndarray | None:
    """The pixels (H, W bool) whose chromaticity (chroma, posefit.masks.chromaticity) has the piece's hue (its
    pixels' median's offset from grey; cosine at least OCCLUDER_HUE_COS) with at least `least` times its
    saturation; None for a piece less saturated than OCCLUDER_SATURATION[0] (grey: no hue to follow)."""
    offset = chroma - 1.0 / 3.0  # from grey
    hue = np.median(chroma[piece], 0) - 1.0 / 3.0 if piece.any() else np.zeros(chroma.shape[-1])
    saturation = float(np.linalg.norm(hue))
    if saturation < OCCLUDER_SATURATION[0]:
        return None
    length = np.linalg.norm(offset, axis=-1)
    return (offset @ hue >= OCCLUDER_HUE_COS * length * saturation) & (length >= least * saturation)


def same_hue_around(chroma: np.ndarray, mask: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """The piece (H, W bool) with the mask's pixels of its hue joined to it within OCCLUDER_GROWTH pixels
    (chroma: the photo's chromaticity, posefit.masks.chromaticity)."""
    alike = of_its_hue(chroma, piece, OCCLUDER_SATURATION[1])
    if alike is None:
        return piece
    near = ndimage.binary_dilation(piece, iterations=OCCLUDER_GROWTH)
    joined, _ = ndimage.label((alike & near & mask) | piece)
    return np.isin(joined, np.unique(joined[piece])) & mask


def in_front_piece(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, photo: np.ndarray,
                   best_score=lambda iou, scale: float(iou.max()), regions: np.ndarray | None = None,
                   trial=None) -> torch.Tensor | None:
    """The care weights (H, W; 0 on the piece) if a piece of the mask is something in front of the object,
    else None.

    A post or a box in front of the object joins the mask (it is not the backdrop), and a silhouette fitted
    to it turns towards it (on the photo benchmark's tuning seeds none of the occluded photos succeeded).
    The grid tells it: with the piece left out (and the views scaled up to make up for the part of the
    object behind it), some view explains the rest much better than any explains the whole mask. A piece
    of the object itself (a cow's black patch) left out helps no view: the right one covers it anyway. A piece
    outside the mask that parts it (parting_pieces: a post that the backdrop took) is a candidate too.
    best_score(iou, scale): the best of a grid's scores (of those the prior allows). regions: photo_regions(photo),
    if already found (the photo's masks are scored in turn: posefit.readings.choose_reading). trial(mask, care)
    -> IoU: if given, and no candidate beats the whole mask by OCCLUDER_GAIN, the OCCLUDER_TRIALS best that
    beat it at all are tried by it (posefit.search.trial_iou: a short fit), and the best of those that beat the
    whole mask's trial by OCCLUDER_TRIAL_GAIN is taken; failing that, the grid's two best candidates together, if
    the grid scores them above the whole mask, their colours are not the rest's (off_the_object) and their
    trial beats the whole mask's by OCCLUDER_PAIR_GAIN (the faces of a grey or white thing, which no hue joins).
    """
    # The candidates are scored with the views at half their size (a quarter of the cost), and so is the whole
    # mask's score they must beat.
    small = F.avg_pool2d(view_silhouettes[:, None], 2)[:, 0]
    whole, scale, _ = initial.score_grid(small, mask, rolls)
    whole = best_score(whole, scale)

    def grid_score(care):
        return best_score(*initial.score_grid(small, mask, rolls, care=care, scales=initial.OCCLUDED_SCALES)[:2])

    inside = mask.cpu().numpy() > 0.5
    candidates = []  # (score, care), every candidate
    for piece in occluder_candidates(photo, inside, regions) + parting_pieces(inside, regions, photo):
        care = 1.0 - torch.from_numpy(piece).float().to(mask.device)
        candidates.append((grid_score(care), care))
    candidates.sort(key=lambda item: -item[0])  # (stable: of two alike, the larger candidate first)
    scored = [item for item in candidates if item[0] > whole]  # those the grid scores above the whole mask
    if scored and scored[0][0] > whole + OCCLUDER_GAIN:
        return scored[0][1]
    if trial is None:
        return None
    best = None
    if scored:
        best_iou = trial(mask, None) + OCCLUDER_TRIAL_GAIN
        for _, care in scored[:OCCLUDER_TRIALS]:
            iou = trial(mask, care)
            if iou >= best_iou:
                best, best_iou = care, iou
    if best is None and len(candidates) > 1:
        # The grid's two best left out together (OCCLUDER_PAIR_GAIN): the faces of a grey or white thing.
        both = torch.minimum(candidates[0][1], candidates[1][1])
        share = float(((1 - both) * mask).sum() / mask.sum().clamp(min=1))
        if (share <= OCCLUDER_SHARE[1] and grid_score(both) > whole
                and off_the_object(photo, inside, both.cpu().numpy() < 0.5) >= PAIR_OFF_OBJECT
                and trial(mask, both) >= trial(mask, None) + OCCLUDER_PAIR_GAIN):
            best = both
    return best


def off_the_object(photo: np.ndarray, mask: np.ndarray, piece: np.ndarray) -> float:
    """The share of the piece's pixels (H, W bool) whose colour lies farther than masks.PALETTE_MARGIN (RGB) from
    every colour of the rest of the mask (masks.off_the_palette against masks.object_palette of the smoothed photo:
    the object's own colours, if the piece is something in front)."""
    smooth = masks.smoothed(photo)
    palette = masks.object_palette(smooth, mask & ~piece)
    if not piece.any() or not len(palette):
        return 0.0
    return float(masks.off_the_palette(smooth[piece], palette).mean())


def own_part(photo: np.ndarray, mask: torch.Tensor, care: torch.Tensor, trial) -> bool:
    """Is the piece that `care` leaves out (its weights 0) a plain object's own part, not something in front: a
    part of the mask (H, W; at least OWN_INSIDE of the piece inside it) coloured as the rest of it (fewer than
    OWN_COLOURS of its pixels there off those colours, off_the_object), which the short fit (trial(mask, care)
    -> IoU, posefit.search.trial_iou) does not explain clearly better left out (by less than OWN_TRIAL_GAIN)?
    (A piece beyond the mask is something beside the object that the backdrop took, borrowed from another
    reading; a textured object's palette holds a post's colours too: a cow's black patches.)"""
    inside_mask = mask.detach().cpu().numpy() > 0.5
    piece = care.detach().cpu().numpy() < 0.5
    inside = inside_mask & piece
    if inside.sum() < OWN_INSIDE * max(piece.sum(), 1) or off_the_object(photo, inside_mask, inside) >= OWN_COLOURS:
        return False
    return trial(mask, care) < trial(mask, None) + OWN_TRIAL_GAIN


def beyond_the_mask(photo: np.ndarray, mask: np.ndarray, care: torch.Tensor) -> torch.Tensor:
    """The care weights (H, W) with the piece they leave out followed outside the mask (H, W bool): its pixels
    there of the piece's hue (BEYOND_SATURATION), connected to it, near the mask, are left out too (unless they
    hold more than BEYOND_BORDER of the image's border band: the floor's hue). A grey piece has no hue to follow
    (OCCLUDER_SATURATION[0]) and is kept as it is.

    A thing in front of the object hides it wherever it stands, not only where the mask took it in: a post
    whose top the mask holds has its body read as backdrop (it reaches the frame's border), and the silhouette
    term pushed the object's part behind the body out of it (seed 42 case 8, 45/11).
    """
    piece = care.cpu().numpy() < 0.5
    alike = of_its_hue(masks.chromaticity(masks.smoothed(photo)), piece, BEYOND_SATURATION)
    if alike is None:
        return care
    joined, _ = ndimage.label((alike & ~mask) | piece)
    thing = np.isin(joined, np.unique(joined[piece]))
    border = masks.border_band(*mask.shape)
    if (thing & border).sum() > BEYOND_BORDER * border.sum():
        return care
    reach = max(1, round(initial.HIDDEN_REACH * float(np.sqrt((mask & ~piece).sum()))))
    beyond = thing & ~mask & ndimage.binary_dilation(mask, iterations=reach)
    if not beyond.any():
        return care
    return care.masked_fill(torch.from_numpy(beyond).to(care.device), 0.0)


def more_in_front(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, photo: np.ndarray,
                  care: torch.Tensor, best_score, trial, regions: np.ndarray | None = None) -> torch.Tensor:
    """The care weights (H, W) with one more piece of the mask left out, if the grid and a short fit tell it as
    they tell the first (in_front_piece): a second thing in front, or a shadow the mask took in beside one
    (46/7). Each candidate (occluder_candidates) that is not mostly what care leaves out already
    (MORE_OVERLAP) is left out too in turn; the best is taken if the grid's best score beats care's alone by
    OCCLUDER_GAIN and the trial's IoU (trial(mask, care): posefit.search.trial_iou) beats care's alone by
    OCCLUDER_TRIAL_GAIN. best_score and regions as in_front_piece takes them."""
    small = F.avg_pool2d(view_silhouettes[:, None], 2)[:, 0]

    def score(weights):
        return best_score(*initial.score_grid(small, mask, rolls, care=weights, scales=initial.OCCLUDED_SCALES)[:2])

    left_out = care < 0.5
    best, best_value = None, score(care) + OCCLUDER_GAIN
    for piece in occluder_candidates(photo, mask.cpu().numpy() > 0.5, regions):
        piece = torch.from_numpy(piece).to(mask.device)
        if (piece & ~left_out).sum() <= MORE_OVERLAP * piece.sum():
            continue
        more = care.masked_fill(piece, 0.0)
        value = score(more)
        if value > best_value:
            best, best_value = more, value
    if best is None or trial(mask, best) < trial(mask, care) + OCCLUDER_TRIAL_GAIN:
        return care
    return best
