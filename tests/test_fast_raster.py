"""The fast CPU rasterizer gives PyTorch3D's Fragments and gradients."""

import math

import pytest
import torch
from pytorch3d.io import load_obj, load_objs_as_meshes
from pytorch3d.renderer import (
    BlendParams,
    FoVPerspectiveCameras,
    MeshRasterizer,
    RasterizationSettings,
    SoftSilhouetteShader,
)
from pytorch3d.structures import Meshes

from posefit import pose
from posefit.fast_rasterizer import FastMeshRasterizer
from posefit.sparse_shading import CompiledSilhouetteShader, SparseSoftPhongShader


@pytest.fixture(scope="module")
def teapot(meshes_ready):
    verts, faces, _ = load_obj(meshes_ready / "teapot.obj", load_textures=False)
    return Meshes([verts], [faces.verts_idx])


@pytest.fixture(scope="module")
def cow(meshes_ready):
    return load_objs_as_meshes([meshes_ready / "cow_mesh" / "cow.obj"])


def render(rasterizer_cls, mesh, positions, image_size, faces_per_pixel, blur):
    """Fragments and d(loss)/d(camera positions) through a soft silhouette."""
    positions = positions.clone().requires_grad_(True)
    R, T = pose.look_at(positions)
    settings = RasterizationSettings(image_size=image_size, blur_radius=blur, faces_per_pixel=faces_per_pixel)
    rasterizer = rasterizer_cls(cameras=FoVPerspectiveCameras(), raster_settings=settings)
    meshes = mesh.extend(positions.shape[0])
    fragments = rasterizer(meshes, R=R, T=T)
    covered = fragments.pix_to_face >= 0
    if blur > 0:
        # The soft silhouette reads the signed distances.
        image = SoftSilhouetteShader(BlendParams(sigma=1e-4, gamma=1e-4))(fragments, meshes)
        loss = ((image[..., 3] - 0.5) ** 2).sum()
    else:
        # Hard rendering reads depth and barycentric coordinates. (With blur, pixels
        # just outside a sliver seen edge-on give perspective-corrected barycentrics
        # with a floored denominator, whose gradients are ill-conditioned noise in
        # both implementations; the pictures never differentiate through those.)
        loss = (fragments.zbuf * covered).sum() + (fragments.bary_coords[..., 0] * covered).sum()
    loss.backward()
    return fragments, positions.grad


CASES = [
    # mesh, camera positions, image size (H, W), faces per pixel
    ("teapot", [[3.0, 6.9, 2.5]], 64, 100),  # the book's start
    ("teapot", [[0.0, 2.3, 1.9]], (70, 70), 100),  # not a multiple of any tile size
    ("teapot", [[1.0, 0.5, 2.0], [0.3, 0.2, -1.8]], (48, 80), 100),  # a batch, non-square (wide)
    ("teapot", [[0.4, 0.3, 1.4]], (72, 40), 20),  # close: part of the mesh is outside the view; tall
    ("cow", [[2.0, 1.5, 2.0], [-1.0, 0.5, -2.0], [0.0, 2.5, 0.3]], 56, 50),  # textured mesh, 3 cameras
    ("cow", [[2.0, 1.5, 2.0]], 64, 1),  # the hard renderer's settings (no blur)
    ("teapot", [[0.5, 1.0, -2.5], [2.0, 0.5, 1.0]], (40, 56), 1),
]


@pytest.mark.parametrize("mesh_name, positions, image_size, faces_per_pixel", CASES)
def test_fragments_and_gradients_match_stock(request, mesh_name, positions, image_size, faces_per_pixel):
    mesh = request.getfixturevalue(mesh_name)
    positions = torch.tensor(positions)
    blur = math.log(1 / 1e-4 - 1) * 1e-4 if faces_per_pixel > 1 else 0.0
    stock, g_stock = render(MeshRasterizer, mesh, positions, image_size, faces_per_pixel, blur)
    fast, g_fast = render(FastMeshRasterizer, mesh, positions, image_size, faces_per_pixel, blur)

    assert fast.pix_to_face.shape == stock.pix_to_face.shape
    assert (stock.pix_to_face >= 0).sum() > 100, "the case must actually rasterize something"
    agree = fast.pix_to_face == stock.pix_to_face
    assert agree.float().mean().item() >= 0.9999
    both = agree & (stock.pix_to_face >= 0)
    for name in ("zbuf", "dists"):
        assert (getattr(fast, name) - getattr(stock, name))[both].abs().max().item() <= 1e-5, name
    assert (fast.bary_coords - stock.bary_coords)[both].abs().max().item() <= 1e-5
    assert torch.isfinite(g_fast).all()
    assert ((g_fast - g_stock).norm() / g_stock.norm()).item() <= 1e-4


def test_falls_back_to_stock_when_faces_need_near_plane_clipping(teapot):
    # A camera inside the teapot's bounding sphere: some faces lie behind z = znear / 2.
    positions = torch.tensor([[0.0, 0.2, 0.6]])
    stock, g_stock = render(MeshRasterizer, teapot, positions, 32, 10, 1e-4)
    fast, g_fast = render(FastMeshRasterizer, teapot, positions, 32, 10, 1e-4)
    assert torch.equal(stock.pix_to_face, fast.pix_to_face)
    assert torch.allclose(g_fast, g_stock, equal_nan=True)


@pytest.mark.parametrize("positions", [[[2.0, 2.5, 2.0]], [[2.0, 2.5, 2.0], [0.5, -1.0, 2.7], [-2.2, 1.0, -1.5]]])
def test_sparse_phong_shader_matches_stock_shader(cow, positions):
    """Same image and same gradient as SoftPhongShader on the same fragments, also for a batch of cameras."""
    from pytorch3d.renderer import PointLights, SoftPhongShader

    settings = RasterizationSettings(image_size=48, blur_radius=math.log(1 / 1e-4 - 1) * 1e-4, faces_per_pixel=50)
    cameras = FoVPerspectiveCameras()
    lights = PointLights(location=((2.0, 2.0, -2.0),))
    results = []
    for shader_cls in (SoftPhongShader, SparseSoftPhongShader):
        position = torch.tensor(positions, requires_grad=True)
        R, T = pose.look_at(position)
        meshes = cow.extend(len(positions))
        fragments = FastMeshRasterizer(cameras=cameras, raster_settings=settings)(meshes, R=R, T=T)
        image = shader_cls(cameras=cameras, lights=lights)(fragments, meshes, R=R, T=T)
        image[..., :3].square().sum().backward()
        results.append((image.detach(), position.grad))
    (stock_image, stock_grad), (sparse_image, sparse_grad) = results
    assert (stock_image - sparse_image).abs().max().item() <= 1e-5
    assert ((stock_grad - sparse_grad).norm() / stock_grad.norm()).item() <= 1e-4


@pytest.mark.parametrize("positions", [[[3.0, 6.9, 2.5]], [[3.0, 6.9, 2.5], [0.5, -1.0, 2.7], [-2.2, 1.0, -1.5]]])
def test_compiled_silhouette_shader_matches_stock_shader(teapot, positions):
    """Same RGBA image and same gradient as SoftSilhouetteShader on the same fragments (the book's settings, a
    batch too): its C++ kernel's arithmetic, bit for bit on this machine's CPUs; the test allows rounding."""
    from pytorch3d.renderer import BlendParams, SoftSilhouetteShader

    settings = RasterizationSettings(image_size=64, blur_radius=math.log(1 / 1e-4 - 1) * 1e-4, faces_per_pixel=100)
    blend_params = BlendParams(sigma=1e-4, gamma=1e-4)
    results = []
    for shader_cls in (SoftSilhouetteShader, CompiledSilhouetteShader):
        position = torch.tensor(positions, requires_grad=True)
        R, T = pose.look_at(position)
        meshes = teapot.extend(len(positions))
        fragments = FastMeshRasterizer(cameras=FoVPerspectiveCameras(), raster_settings=settings)(meshes, R=R, T=T)
        image = shader_cls(blend_params=blend_params)(fragments, meshes)
        (image[..., 3] - 0.5).square().sum().backward()
        results.append((image.detach(), position.grad))
    (stock_image, stock_grad), (compiled_image, compiled_grad) = results
    assert ((stock_image[..., 3] > 0.01) & (stock_image[..., 3] < 0.99)).sum() >= 10  # soft edges
    assert (stock_image - compiled_image).abs().max().item() <= 1e-6
    assert ((stock_grad - compiled_grad).norm() / stock_grad.norm()).item() <= 1e-5


def test_floored_perspective_denominator_gets_a_finite_small_gradient(teapot):
    """Stock's backward differentiates the floored denominator (noise of order 1/1e-16);
    ours gives the derivative of what the forward computes."""
    positions = torch.tensor([[3.0, 6.9, 2.5]])
    blur = math.log(1 / 1e-4 - 1) * 1e-4

    def bary_grad(cls):
        p = positions.clone().requires_grad_(True)
        R, T = pose.look_at(p)
        settings = RasterizationSettings(image_size=64, blur_radius=blur, faces_per_pixel=100)
        fragments = cls(cameras=FoVPerspectiveCameras(), raster_settings=settings)(teapot, R=R, T=T)
        (fragments.bary_coords[..., 0] * (fragments.pix_to_face >= 0)).sum().backward()
        return p.grad

    stock = bary_grad(MeshRasterizer)
    ours = bary_grad(FastMeshRasterizer)
    # The book's start at 64 px has sliver faces whose floored entries dominate stock's gradient.
    assert stock.norm() > 100 * ours.norm()
    assert torch.isfinite(ours).all() and ours.norm() < 1e3


@pytest.mark.parametrize("kind", ["fast", "stock"])
def test_a_window_is_the_same_pixels_as_in_the_whole_image(cow, kind):
    # render.rasterize_window: the window's outputs are the whole image's there, bit for bit, and the
    # gradient of a loss on them is the gradient of the same loss on the whole image's window (the fast
    # rasterizer with a FoV camera also projects the vertices itself, posefit.fov_projection: the same numbers
    # as the rasterizer's own to float rounding, below).
    from posefit import render

    cameras = FoVPerspectiveCameras(fov=50.0)
    settings = RasterizationSettings(image_size=(48, 64), blur_radius=2e-4, faces_per_pixel=6, cull_backfaces=True)
    rasterizer = (FastMeshRasterizer if kind == "fast" else MeshRasterizer)(cameras=cameras, raster_settings=settings)
    plain = Meshes(verts=cow.verts_list(), faces=cow.faces_list()).extend(2)
    R0, T0 = pose.look_at(torch.tensor([[0.3, 0.8, 2.6], [-1.0, 0.5, 2.4]]))
    window = (9, 40, 14, 51)
    y, x = slice(9, 40), slice(14, 51)
    grads = []
    for whole in (True, False):
        R, T = R0.clone().requires_grad_(True), T0.clone().requires_grad_(True)
        fragments = render.rasterize_window(rasterizer, plain, None if whole else window, R=R, T=T)
        outputs = [fragments.pix_to_face, fragments.zbuf, fragments.bary_coords, fragments.dists]
        if whole:
            own = rasterizer(plain, R=R, T=T)
            same_face = (own.pix_to_face == fragments.pix_to_face).float().mean()
            assert same_face > 0.999
            for got, want in zip(outputs[1:], [own.zbuf, own.bary_coords, own.dists], strict=True):
                agree = (got - want).abs() <= 1e-5 + 1e-4 * want.abs()
                assert agree.float().mean() > 0.999
            outputs = [t[:, y, x] for t in outputs]
            expected = outputs
        else:
            for got, want in zip(outputs, expected, strict=True):
                assert got.shape == want.shape and torch.equal(got, want)
        loss = (outputs[3].clamp(min=0) * 1e3).sum() + outputs[1].clamp(min=0).sum() + outputs[2].clamp(min=0).sum()
        grads.append(torch.autograd.grad(loss, (R, T)))
    for got, want in zip(grads[1], grads[0], strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_the_compiled_projection_is_torchs_and_so_is_its_gradient(cow):
    # posefit.fov_projection: each face's corners in NDC (x @ R + T, then the FoV projection matrix, the depth
    # kept as z), two meshes of a batch each with its own pose, against the same formula in torch operations;
    # and the gradient of a loss on them in R and T.
    from posefit import render
    from posefit.fov_projection import project_faces

    plain = Meshes(verts=cow.verts_list(), faces=cow.faces_list()).extend(2)
    projection = render._fov_projection(FoVPerspectiveCameras(fov=50.0))
    R0, T0 = pose.look_at(torch.tensor([[0.3, 0.8, 2.6], [-1.0, 0.5, 2.4]]))
    weights = torch.randn(plain.faces_packed().shape[0], 3, 3, generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (True, False):
        R, T = R0.clone().requires_grad_(True), T0.clone().requires_grad_(True)
        if compiled:
            corners, nearest = project_faces(plain, R, T, projection)
        else:
            view = torch.bmm(plain.verts_padded(), R) + T[:, None]
            h = torch.cat([view, torch.ones_like(view[..., :1])], -1) @ projection
            ndc = torch.cat([h[..., :2] / h[..., 3:], view[..., 2:]], -1).reshape(-1, 3)
            corners = ndc[plain.faces_packed()]
            nearest = float(corners[..., 2].min().detach())
        results.append((corners.detach(), nearest, *torch.autograd.grad((corners * weights).sum(), (R, T))))
    (ours, our_nearest, *our_grads), (theirs, their_nearest, *their_grads) = results
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6) and not torch.allclose(ours[:len(weights) // 2], ours[len(weights) // 2:])
    assert our_nearest == pytest.approx(their_nearest, rel=1e-6)
    for got, want in zip(our_grads, their_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_a_window_outside_the_image_is_refused(teapot):
    from posefit.fast_raster import fast_rasterize_meshes

    cameras = FoVPerspectiveCameras()
    R, T = pose.look_at(torch.tensor([[0.0, 1.0, 3.0]]))
    meshes = MeshRasterizer(cameras=cameras).transform(teapot, R=R, T=T)
    with pytest.raises(ValueError, match="window"):
        fast_rasterize_meshes(meshes, image_size=32, window=(0, 40, 0, 10))


def test_the_kernels_box_search_is_searchsorted():
    # The kernel finds each face's pixel box by walking from a guess made from the centres' spacing: the
    # same indices as torch.searchsorted, for values anywhere (inside, between, on a centre, outside,
    # infinite) and rows of any length; a value that is not a number gives an empty box (index 0 both ways,
    # as the binary search before it gave; torch puts it last).
    import numpy as np

    from posefit import fast_raster, raster_kernels

    rng = np.random.default_rng(0)
    for size, other in [(1, 1), (2, 3), (7, 5), (120, 160), (160, 120), (255, 256)]:
        centres = fast_raster.pixel_centers_ndc(size, other)
        values = np.concatenate([rng.uniform(-2.5, 2.5, 400), centres.numpy(), np.nextafter(centres.numpy(), 9),
                                 [np.inf, -np.inf, 1e30, -1e30]]).astype(np.float32)
        assert raster_kernels._first_at_least(centres.numpy(), np.float32(np.nan)) == 0
        assert raster_kernels._first_above(centres.numpy(), np.float32(np.nan)) == 0
        for value in values:
            at_least = int(torch.searchsorted(centres, torch.tensor(value)))
            above = int(torch.searchsorted(centres, torch.tensor(value), right=True))
            assert raster_kernels._first_at_least(centres.numpy(), value) == at_least, (size, value)
            assert raster_kernels._first_above(centres.numpy(), value) == above, (size, value)
