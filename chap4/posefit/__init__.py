"""The pose library under the chapter's scripts: one concern a module, imports running one way.

From the bottom up:

- errors: UserError and the exit codes.
- data: the meshes (pooch registry, $CHAP4_DATA_MIRROR, SHA-256).
- fast_raster: the fast CPU rasterization op, fast_rasterize_meshes (forward and backward).
- fast_rasterizer: FastMeshRasterizer, the MeshRasterizer drop-in that uses it.
- sparse_shading: SparseSoftPhongShader, soft Phong that lights only the filled entries.
- render: the chapter's renderers (book settings), fast or stock rasterizer.
- pose: the book's look-at camera and the 6-DoF pose as batches of parameters; R, T; pose files; errors.
- masks: which pixels of a photo are the object (a backdrop model from the border, edges).
- targets: what is fitted: the book's target, an image file; the book's mask rule; a photo's colours relit.
- initial: where a 6-DoF fit starts: a coarse grid of views scored against the mask.
- colour_starts: a photo's 6-DoF starts chosen by the object's colours (a plain one's shading) among the grid's best.
- turns: a plain object's answer turned about the floor's vertical, the turns its colours prefer.
- search: several hypotheses at once: starts, schedule, pruning, the best, ambiguity.
- run: a fit's options (the book's defaults) and its run control: progress bar, stop rule, NaN, Ctrl-C.
- smoothing: the tracker's reported poses, each frame's fit smoothed with its neighbours'.
- frames: the pictures, the GIF and the MP4, written by a background process (started without the caller's script).
- video: the frames of a sequence to track: a folder of PNG or JPEG files, a video file, or rendered;
  read ahead in the background.
- outputs: output folder, summary.json, final.png, loss.png, the result line.
- cli: the shared flags and their validation.

Nothing is imported here: the scripts import the modules they use
(`from posefit import pose, render`), and the picture writer's process
starts without torch.
"""
