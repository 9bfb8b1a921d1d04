"""The fast rasterizer behaves as a plain function, as stock's does: stock's validation, no state, no side effects."""

import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
from pytorch3d.renderer import FoVPerspectiveCameras, RasterizationSettings
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes

from posefit import fast_raster, fast_rasterizer, pose
from posefit.fast_raster import fast_rasterize_meshes
from posefit.fast_rasterizer import FastMeshRasterizer, FragmentReuse

BLUR = math.log(1 / 1e-4 - 1) * 1e-4


def triangles(dtype=torch.float32):
    """Two overlapping triangles in NDC, in front of the camera."""
    verts = torch.tensor([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0],
                          [-0.3, -0.2, 2.0], [0.6, 0.1, 2.0], [0.1, 0.7, 2.0]], dtype=dtype)
    return Meshes([verts], [torch.tensor([[0, 1, 2], [3, 4, 5]])])


VALIDATION = {
    "bin_size too small": dict(image_size=64, bin_size=2),
    "non-integer size": dict(image_size=(64.7, 64)),
    "zero size": dict(image_size=(0, 64)),
    "one number in a tuple": dict(image_size=(64,)),
    "three numbers": dict(image_size=(8, 8, 8)),
    "negative size": dict(image_size=-3),
    "float size": dict(image_size=32.0),
    "numpy integer size": dict(image_size=np.int64(16)),
    "list size": dict(image_size=[16, 20]),
    "negative faces per pixel": dict(image_size=16, faces_per_pixel=-1),
    "non-integer faces per pixel": dict(image_size=16, faces_per_pixel=2.5),
    "zero faces per pixel": dict(image_size=16, faces_per_pixel=0),
    "float64 vertices": dict(image_size=16, dtype=torch.float64),
}


def outcome(function, kwargs):
    kwargs = dict(kwargs)
    meshes = triangles(kwargs.pop("dtype", torch.float32))
    try:
        pix_to_face, zbuf, bary, dists = function(meshes, **kwargs)
    except Exception as exc:  # what stock raises is what is compared
        return type(exc), str(exc)
    return "ok", (tuple(pix_to_face.shape), tuple(bary.shape), pix_to_face.dtype, zbuf.dtype)


@pytest.mark.parametrize("kwargs", VALIDATION.values(), ids=VALIDATION.keys())
def test_validation_matches_stock(kwargs):
    stock, fast = outcome(rasterize_meshes, kwargs), outcome(fast_rasterize_meshes, kwargs)
    assert fast[0] == stock[0]
    if stock[0] is TypeError:
        # pybind's message lists every argument type of the C++ signature; the first words are the same.
        assert fast[1].split(".")[0] == stock[1].split(".")[0] == "rasterize_meshes(): incompatible function arguments"
    else:
        assert fast[1] == stock[1]


def test_a_bin_size_that_stock_accepts_is_ignored_on_the_cpu():
    # Stock's CPU has no binned mode ("NOT IMPLEMENTED"); the fast path rasterizes without bins.
    with pytest.raises(RuntimeError, match="NOT IMPLEMENTED"):
        rasterize_meshes(triangles(), image_size=32, bin_size=8)
    binned = fast_rasterize_meshes(triangles(), image_size=32, bin_size=8)
    plain = rasterize_meshes(triangles(), image_size=32, bin_size=0)
    for ours, theirs in zip(binned, plain, strict=True):
        assert torch.equal(ours, theirs)


@pytest.fixture(scope="module")
def cow(meshes_ready):
    from pytorch3d.io import load_objs_as_meshes

    return load_objs_as_meshes([meshes_ready / "cow_mesh" / "cow.obj"])


def project(mesh, position=(1.0, 2.0, 2.5)):
    """The mesh in NDC, as MeshRasterizer hands it to rasterize_meshes."""
    R, T = pose.look_at(torch.tensor(position))
    return FastMeshRasterizer(cameras=FoVPerspectiveCameras(), raster_settings=RasterizationSettings()).transform(
        mesh, R=R, T=T)


SETTINGS = dict(image_size=32, blur_radius=BLUR, faces_per_pixel=20, perspective_correct=True)


def test_editing_one_calls_outputs_in_place_changes_nothing_else(cow):
    projected = project(cow)
    first = fast_rasterize_meshes(projected, **SETTINGS)
    kept = [t.clone() for t in first]
    for t in first:
        t.mul_(0)
    first[0].fill_(7)
    for k in (20, 10):  # the same and fewer faces per pixel
        again = fast_rasterize_meshes(projected, **dict(SETTINGS, faces_per_pixel=k))
        stock = rasterize_meshes(projected, **dict(SETTINGS, faces_per_pixel=k))
        assert torch.equal(again[0], stock[0])
        for ours, before in zip(again, kept, strict=True):
            assert torch.equal(ours, before[..., :k] if ours.dim() == 4 else before[..., :k, :])


def tensors_held_by(*modules):
    """Tensors referenced by module globals or class attributes of these modules."""
    found = []
    for module in modules:
        for value in vars(module).values():
            holders = [value] + ([vars(value)] if isinstance(value, type) else [])
            for holder in holders:
                values = holder.values() if isinstance(holder, dict) else [holder]
                found += [v for v in values if torch.is_tensor(v)]
                found += [v for v in values if isinstance(v, (list, tuple)) and any(torch.is_tensor(x) for x in v)]
    return found


def test_no_state_is_kept_and_outputs_die_with_the_caller(cow):
    projected = project(cow)
    outputs = fast_rasterize_meshes(projected, **SETTINGS)
    shape = tuple(outputs[0].shape)
    assert not tensors_held_by(fast_raster, fast_rasterizer)
    alive = [weakref.ref(t) for t in outputs]
    del outputs
    gc.collect()
    assert all(ref() is None for ref in alive)
    with warnings.catch_warnings():  # isinstance() on some of torch's deprecated module attributes warns
        warnings.simplefilter("ignore", FutureWarning)
        left = [o for o in gc.get_objects() if torch.is_tensor(o) and tuple(o.shape[:4]) == shape]
    assert not left, "no (N, H, W, K) tensor outlives the call"


def test_every_call_rasterizes(cow, monkeypatch):
    calls = []
    real = fast_raster._rasterize_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_raster, "_rasterize_forward", counted)
    projected = project(cow)
    first = fast_rasterize_meshes(projected, **SETTINGS)
    second = fast_rasterize_meshes(projected, **SETTINGS)
    assert len(calls) == 2
    assert all(a is not b and torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_rasterizing_changes_no_process_setting(cow):
    threads = torch.get_num_threads()
    fast_rasterize_meshes(project(cow), **SETTINGS)
    assert torch.get_num_threads() == threads
    assert not hasattr(fast_raster, "_heap_reuse_checked"), "no malloc tuning on import or first use"


def test_fewer_faces_per_pixel_reuses_the_first_fragments_exactly(cow):
    """The cow's textured pass (50 faces) handed the silhouette pass's (100) gives the same fragments and gradient."""
    cameras = FoVPerspectiveCameras()
    results = []
    for reuse in (None, FragmentReuse()):
        position = torch.tensor([[1.0, 2.0, 2.5]], requires_grad=True)
        R, T = pose.look_at(position)
        if reuse is not None:
            settings = RasterizationSettings(image_size=40, blur_radius=BLUR, faces_per_pixel=100)
            FastMeshRasterizer(cameras=cameras, raster_settings=settings, give_to=reuse)(cow, R=R, T=T)
            assert reuse.held is not None
        settings = RasterizationSettings(image_size=40, blur_radius=BLUR, faces_per_pixel=50)
        fragments = FastMeshRasterizer(cameras=cameras, raster_settings=settings, take_from=reuse)(cow, R=R, T=T)
        (fragments.zbuf.sum() + fragments.bary_coords[..., 1].sum() + fragments.dists.sum()).backward()
        results.append((fragments, position.grad))
        if reuse is not None:
            assert reuse.taken == 1 and reuse.held is None, "taken once, then the object holds nothing"
    (alone, grad_alone), (reused, grad_reused) = results
    for name in ("pix_to_face", "zbuf", "bary_coords", "dists"):
        assert torch.equal(getattr(alone, name), getattr(reused, name)), name
        assert getattr(reused, name).is_contiguous()
    assert (alone.pix_to_face >= 0).any()
    assert torch.allclose(grad_alone, grad_reused, rtol=1e-6, atol=0)


def test_reuse_is_refused_when_anything_differs(cow):
    """Other faces, other settings, more faces per pixel, or the first outputs edited: the taker rasterizes."""
    cameras = FoVPerspectiveCameras()
    R, T = pose.look_at(torch.tensor([1.0, 2.0, 2.5]))
    R2, T2 = pose.look_at(torch.tensor([1.1, 2.0, 2.5]))
    reuse = FragmentReuse()

    def give(k=100, blur=BLUR):
        settings = RasterizationSettings(image_size=24, blur_radius=blur, faces_per_pixel=k)
        return FastMeshRasterizer(cameras=cameras, raster_settings=settings, give_to=reuse)(cow, R=R, T=T)

    def take(k=50, R=R, T=T, blur=BLUR):
        settings = RasterizationSettings(image_size=24, blur_radius=blur, faces_per_pixel=k)
        return FastMeshRasterizer(cameras=cameras, raster_settings=settings, take_from=reuse)(cow, R=R, T=T)

    give(), take(R=R2, T=T2)
    give(), take(blur=BLUR / 2)
    give(k=20), take(k=50)
    edited = give()
    edited.zbuf.add_(1.0)
    fragments = take()
    assert reuse.taken == 0 and reuse.held is None
    fresh = FastMeshRasterizer(cameras=cameras, raster_settings=RasterizationSettings(
        image_size=24, blur_radius=BLUR, faces_per_pixel=50))(cow, R=R, T=T)
    assert torch.equal(fragments.zbuf, fresh.zbuf)
