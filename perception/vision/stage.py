"""The vision stage: GLM-4.1V's vision tower on the frames the gateway wrote
(params.compute = "model"), or the minimal random-projection stand-in of the plumbing tests
(params.compute = "minimal").

Model compute: for every request with images, each image's uint8 [H, W, 3] frame is read
from its `frames` slot and brought to the size of the request's grid for it
(``extra["image_grids"]``: the smart_resize target, multiples of patch * merge). The gateway
resizes it itself unless this stage announced "resizes frames" in its ready state
(params.resize_frames: "auto" = on CUDA, after a check against Pillow at start) and the image
fits a slot; then it comes at its own size and perception.vision.resize does it on the
device, Pillow's bicubic bit for bit. Then it is normalised and cut into merge-ordered
patches (DevicePatchifier: on the tower's device, bit-identical to the CPU processor), run
through the VisionTower
(device and dtype from the spec: cuda + bf16 where available, else cpu + fp32), and its
[n_tokens, hidden] embeddings are written into the `embeddings` pool, one slot per image, in
order, each announced by a `modality_ready` event (modality "image", detail JSON
{"key": "imageN"}, grid_thw, n_tokens). A frame that cannot be used fails that request with
an error event naming the problem; the stage carries on.
"""
from __future__ import annotations

import time

import numpy as np

from runtime.compute import fixed_projection, shm_ref, slot_ref
from runtime.stage import config_float

MODALITY = "image"


class MinimalVisionStage:
    request_modality = MODALITY   # reads only the requests that carry it

    def __init__(self, ctx):
        self.ctx = ctx
        self.patch = int(ctx.params.get("patch", 14))
        self.hidden = int(ctx.params.get("hidden", 64))
        self.proj = fixed_projection(self.patch * self.patch * 3, self.hidden,
                                     int(ctx.params.get("seed", 0)))
        self.scale = float(ctx.params.get("scale", 1.0))
        # Simulated compute time (seconds): lets tests hold a request inside the stage.
        self.delay_s = float(ctx.params.get("delay_s", 0.0))
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"

    # The config names it takes, with their types: the runtime refuses any other value.
    config_params = {"vision.scale": config_float(), "vision.delay_s": config_float(minimum=0)}

    def on_config(self, name: str, value) -> None:
        if name == "vision.scale":
            self.scale = float(value)
        elif name == "vision.delay_s":
            self.delay_s = float(value)

    def embed(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] frame, got shape {frame.shape}")
        p = self.patch
        gh, gw = frame.shape[0] // p, frame.shape[1] // p
        if gh == 0 or gw == 0:
            raise ValueError(f"frame {frame.shape[:2]} is smaller than one {p}x{p} patch")
        tiles = (frame[: gh * p, : gw * p].reshape(gh, p, gw, p, 3)
                 .transpose(0, 2, 1, 3, 4).reshape(gh * gw, p * p * 3))
        emb = (tiles.astype(np.float32) / 255.0) @ self.proj * self.scale
        return emb, (1, gh, gw)

    def on_request(self, req) -> None:
        if MODALITY not in req.modalities:
            return  # no image: no work here
        rid = req.request_id
        self.ctx.begin(rid)
        try:
            ref = slot_ref(req.media[list(req.modalities).index(MODALITY)])
            frames = self.ctx.pool(ref.channel)
            with frames.view(ref) as frame:
                emb, grid = self.embed(frame)
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            out = self.ctx.pool(self.out_channel).put(emb, readers=1, timeout=5.0)
        except Exception as e:  # the request fails, the stage lives on
            self.ctx.fail(rid, f"vision: {e}")
            return
        self.ctx.emit("modality_ready", rid, modality=MODALITY, output=shm_ref(out, emb.nbytes),
                      n_tokens=emb.shape[0], grid_thw=list(grid))
        self.ctx.finish(rid, n_tokens=emb.shape[0])




class ModelVisionStage:
    request_modality = MODALITY   # reads only the requests that carry it

    def __init__(self, ctx):
        import torch

        from perception.vision.device_patchify import DevicePatchifier
        from perception.vision.model import VisionTower
        from perception.vision.processor import ImageProcessor
        from runtime.compute import resolve_model_dir, torch_device_dtype

        self.ctx = ctx
        self.model_dir = resolve_model_dir(ctx)
        self.device, self.dtype = torch_device_dtype(ctx)
        if self.device.type == "cpu" and ctx.params.get("threads"):
            torch.set_num_threads(int(ctx.params["threads"]))
        self.tower = VisionTower.from_pretrained(self.model_dir, dtype=self.dtype,
                                                 device=self.device)
        self.processor = ImageProcessor.from_dir(self.model_dir)
        self.patchify = DevicePatchifier(self.processor, self.device)
        # params.resize_frames: "auto" (on CUDA), true (here on the CPU too), false (the gateway
        # resizes every image, as it does for stages that do not announce it).
        mode = ctx.params.get("resize_frames", "auto")
        if mode not in ("auto", True, False):
            raise ValueError(f"params.resize_frames must be \"auto\", true or false, got {mode!r}")
        self.resizes_frames = self.device.type == "cuda" if mode == "auto" else mode
        # On CUDA with torch (perception.vision.resize); on a CPU core Pillow is ~9x faster
        # (30 ms against ~280 for a 1080x2400 screenshot on the 2-core VM) and the reference.
        self.torch_resize = self.device.type == "cuda"
        self.out_channel = ctx.stage.outputs[0] if ctx.stage.outputs else "embeddings"
        self.put_timeout = float(ctx.params.get("put_timeout_s", 10.0))
        ctx.log(f"vision tower from {self.model_dir} on {self.device} ({self.dtype})")
        self.pinned = None
        if self.device.type == "cuda":
            from runtime.host_pinning import pin_pools

            self._warm_up()
            # Frames in and embeddings out are DMAs: a frame's slot goes back after the
            # tower's output came back to the host, so after its own copy.
            self.pinned = pin_pools(ctx, [*ctx.stage.inputs, *ctx.stage.outputs])
        if self.resizes_frames and self.torch_resize:
            self._check_device_resize()
        if self.resizes_frames:
            how = "on the GPU, equal to Pillow on its check" if self.torch_resize else "with Pillow"
            ctx.log(f"resizes the frames the gateway sends at their own size ({how})")

    def _warm_up(self) -> None:
        """One blank frame through the tower before the stage reports ready: the first CUDA
        call of each kernel (context, cuBLAS handles, lazy module loads) took about a second
        on an H100, which the first user's image would otherwise pay."""
        import torch

        t0 = time.monotonic()
        side = self.processor.patch_size * self.processor.merge_size * 8
        self.embed(torch.zeros((side, side, 3), dtype=torch.uint8, device="cpu"))
        torch.cuda.synchronize(self.device)
        self.ctx.log(f"warmed up in {time.monotonic() - t0:.1f} s")

    @property
    def ready_notes(self) -> tuple[str, ...]:
        """Said in the stage's ready state: the gateway then sends frames at their own size."""
        from runtime.compute import RESIZES_FRAMES

        return (RESIZES_FRAMES,) if self.resizes_frames else ()

    def close(self) -> None:
        if self.pinned is not None:
            self.pinned.unpin()

    def _check_device_resize(self) -> None:
        """The device's resize against Pillow's on a random image, once per pass order; on
        any difference or error the stage leaves resizing to the gateway, and says so."""
        import torch

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
        for h, w in ((84, 112), (28, 140)):   # horizontal pass first; vertical first
            ref = self.processor.resize_to(image, h, w)
            try:
                got = self.to_size(torch.from_numpy(image), h, w).cpu().numpy()
                why = f"{int((ref != got).sum())} values differ from this Pillow's at {w}x{h}"
            except Exception as e:
                got, why = None, f"{type(e).__name__}: {e}"
            if got is None or not np.array_equal(ref, got):
                self.ctx.log(f"frames are resized by the gateway: the device's resize failed "
                             f"its check ({why})")
                self.resizes_frames = self.torch_resize = False   # Pillow for any in flight
                return

    def to_size(self, frame, height: int, width: int):
        """The uint8 [H, W, 3] frame at (height, width): as it is when it has that size, else
        resized with Pillow's bicubic: on CUDA by perception.vision.resize, else by Pillow."""
        import torch

        if tuple(frame.shape[:2]) == (height, width):
            return frame
        if self.torch_resize:
            from perception.vision.resize import resize_bicubic

            return resize_bicubic(frame.to(self.device, non_blocking=True), height, width)
        return torch.from_numpy(self.processor.resize_to(frame.cpu().numpy(), height, width))

    def embed(self, frame, loan=None):
        """uint8 [H, W, 3] frame at its smart_resize size -> (embeddings [n_tokens, hidden],
        grid).

        With a shm WriteLoan on the CPU the tower's last matmul writes straight into the
        slot and the embeddings returned are that slot; on CUDA they come back on the device
        (the loan's write() then makes the one device-to-host copy into the slot)."""
        import torch

        pixels, grid = self.patchify(frame)
        out = None
        if loan is not None and self.device.type == "cpu":
            out = loan.tensor((self.tower.num_tokens(grid), self.tower.cfg.out_hidden_size),
                              self.dtype)
        with torch.inference_mode():
            emb = self.tower(pixels, [grid], out=out)
        if loan is None:
            emb = emb.to("cpu")
        elif out is None:
            loan.write(emb)
        return emb, grid

    def on_request(self, req) -> None:
        import json

        import torch

        from control.messages import unpack_extra
        from runtime.compute import shm_ref, slot_ref

        mods = list(req.modalities)
        at = [i for i, m in enumerate(mods) if m == MODALITY]
        if not at:
            return  # no image: no work here
        rid = req.request_id
        self.ctx.begin(rid)
        tracer = self.ctx.tracer
        pool = self.ctx.pool(self.out_channel)
        grids = unpack_extra(req.extra).get("image_grids") or []
        patch = self.processor.patch_size
        for n, i in enumerate(at):
            ref = slot_ref(req.media[i])
            loan = None
            try:
                frames = self.ctx.pool(ref.channel)
                t0 = time.monotonic_ns()
                frame = frames.read_torch(ref)    # in place: given back once patchified
                frame_bytes = frame.numel()
                t1 = time.monotonic_ns()
                size = (grids[n][1] * patch, grids[n][2] * patch) if n < len(grids) else None
                resized = size is not None and tuple(frame.shape[:2]) != size
                if resized:
                    frame = self.to_size(frame, *size)
                    if frame.is_cuda:
                        torch.cuda.synchronize(self.device)   # its own time, in its own span
                tr = time.monotonic_ns()
                # The output slot is loaned before the tower runs, which then computes into
                # it: the embeddings never take another copy on their way to the decision.
                try:
                    loan = pool.acquire(self.put_timeout)
                    ta = time.monotonic_ns()
                    emb, grid = self.embed(frame, loan)
                finally:
                    del frame
                    frames.release(ref)
                t2 = time.monotonic_ns()
                out = loan.commit(readers=1)
                t3 = time.monotonic_ns()
            except Exception as e:  # the request fails, the stage lives on
                if loan is not None:
                    loan.abort()
                for j in at[n + 1:]:  # give back the frames this request will never read
                    try:
                        self.ctx.pool(req.media[j].channel).release(slot_ref(req.media[j]))
                    except Exception:
                        pass
                self.ctx.fail(rid, f"vision: image {n}: {e}")
                return
            nbytes = emb.numel() * emb.element_size()
            n_tokens = int(emb.shape[0])
            del emb                              # the slot is the decision stage's now
            self.ctx.emit("modality_ready", rid, modality=MODALITY,
                          output=shm_ref(out, nbytes), n_tokens=n_tokens,
                          grid_thw=list(grid), detail=json.dumps({"key": f"image{n}"}))
            # Spans after the event, so the decision stage never waits on them; a failing
            # image leaves none. Frame taken from shm; resized (when the gateway sent it at
            # its own size); processor + tower + merger (computing into the loaned slot); the
            # hand-off: slot loaned (acquire_ns) and committed.
            tracer.emit("vision.frame_read", rid, t0, t1, image=n,
                        bytes=frame_bytes)
            if resized:
                tracer.emit("vision.resize", rid, t1, tr, image=n, size=list(size))
            tracer.emit("vision.encode", rid, ta, t2, image=n, tokens=n_tokens,
                        grid=list(grid))
            tracer.emit("vision.shm_write", rid, t2, t3, image=n, bytes=nbytes,
                        acquire_ns=ta - tr)
        self.ctx.finish(rid, n_tokens=len(at))


def make_stage(ctx):
    from runtime.compute import compute_kind

    if compute_kind(ctx) == "model":
        return ModelVisionStage(ctx)
    return MinimalVisionStage(ctx)
