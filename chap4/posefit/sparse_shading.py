"""The soft shaders' CPU forms for the fast path, the same images and gradients as PyTorch3D's:
SparseSoftPhongShader, SoftPhongShader that lights only the (pixel, k) entries that hold a face, and
CompiledSilhouetteShader, SoftSilhouetteShader with its alpha blended in one compiled loop."""

from __future__ import annotations

import torch
from pytorch3d.renderer.blending import softmax_rgb_blend
from pytorch3d.renderer.mesh.rasterizer import Fragments
from pytorch3d.renderer.mesh.shader import SoftPhongShader, SoftSilhouetteShader
from pytorch3d.renderer.mesh.shading import phong_shading

from posefit.blend_kernels import silhouette_alpha


class SparseSoftPhongShader(SoftPhongShader):
    """SoftPhongShader that lights only the (pixel, k) entries holding a face.

    The stock shader interpolates normals, samples the texture and evaluates
    Phong lighting for all N*H*W*K entries, although at the book's 50 faces
    per pixel most of them are empty and their colour is multiplied by a zero
    weight in softmax_rgb_blend. Here each image's non-empty entries are
    gathered into a row of an (N, 1, M, 1) "image" (M: the most any image
    has; shorter rows are padded with empty entries), shaded with PyTorch3D's
    own functions, and scattered back, so the blended image and its gradients
    are the same.
    """

    def forward(self, fragments: Fragments, meshes, **kwargs) -> torch.Tensor:
        if fragments.pix_to_face.is_cuda:
            return super().forward(fragments, meshes, **kwargs)
        cameras = super()._get_cameras(**kwargs)
        lights = kwargs.get("lights", self.lights)
        materials = kwargs.get("materials", self.materials)
        blend_params = kwargs.get("blend_params", self.blend_params)
        N, H, W, K = fragments.pix_to_face.shape
        filled = fragments.pix_to_face.reshape(N, -1) >= 0
        image, entry = torch.nonzero(filled, as_tuple=True)  # image-major, as nonzero orders them
        per_image = filled.sum(dim=1)
        M = max(int(per_image.max()), 1) if N else 1
        column = torch.arange(image.numel()) - torch.repeat_interleave(torch.cumsum(per_image, 0) - per_image, per_image)
        flat = image * (H * W * K) + entry  # index into the flattened (N*H*W*K) fragments
        row = image * M + column  # index into the flattened (N*M) compact image

        def compact(values, fill, channels=()):
            out = values.new_full((N * M, *channels), fill)
            out[row] = values.reshape(-1, *channels)[flat]
            return out.view(N, 1, M, 1, *channels)

        packed = Fragments(
            pix_to_face=compact(fragments.pix_to_face, -1),
            zbuf=compact(fragments.zbuf, -1.0),
            bary_coords=compact(fragments.bary_coords, -1.0, (3,)),
            dists=compact(fragments.dists, -1.0),
        )
        texels = meshes.sample_textures(packed)
        colors_packed = phong_shading(
            meshes=meshes, fragments=packed, texels=texels, lights=lights, cameras=cameras, materials=materials
        )
        colors = colors_packed.new_zeros((N * H * W * K, 3)).index_put((flat,), colors_packed.reshape(N * M, 3)[row])
        colors = colors.view(N, H, W, K, 3)
        znear = kwargs.get("znear", getattr(cameras, "znear", 1.0))
        zfar = kwargs.get("zfar", getattr(cameras, "zfar", 100.0))
        return softmax_rgb_blend(colors, fragments, blend_params, znear=znear, zfar=zfar)


class CompiledSilhouetteShader(SoftSilhouetteShader):
    """SoftSilhouetteShader whose alpha is blend_kernels.silhouette_alpha on the CPU: sigmoid_alpha_blend's
    arithmetic, the same numbers, without the (N, H, W, K, 3) tensor of ones it is handed for colours
    (at the book's 256 px and 100 faces per pixel, 79 MB written at every iteration for an RGB of ones).
    Returns the same RGBA image: RGB one, the gradient through alpha only."""

    def forward(self, fragments: Fragments, meshes, **kwargs) -> torch.Tensor:
        if fragments.pix_to_face.is_cuda:
            return super().forward(fragments, meshes, **kwargs)
        blend_params = kwargs.get("blend_params", self.blend_params)
        alpha = silhouette_alpha(fragments.pix_to_face, fragments.dists, sigma=blend_params.sigma)
        image = torch.ones((*alpha.shape, 4), dtype=fragments.dists.dtype)
        image[..., 3] = alpha
        return image
