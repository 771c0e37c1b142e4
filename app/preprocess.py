"""How an image becomes a network input, written once, and the inference that follows it.

    decode      the file -> RGB, shorter side scaled to `resize_size`, the central square (app/data.py)
    crop        the central `input_size` square (or the paper's 10 views: 4 corners + centre, mirrored)
    normalise   (pixel - mean) * input_scale, pixels 0..255, into float32 NCHW

A Preprocessing holds the four numbers that make this exact: the training mean (a per-pixel image
or three channel means), the input scale, and the two sizes. Training fixes it (the mean of the
training set, the recipe's scale, the model's sizes); every checkpoint stores it (`data/mean` and
three metadata fields) and `load_model` returns it, so eval, predict, saliency, neighbours, the ONNX
export and fine-tuning all feed a model exactly what it was trained on. Training's own batches
(app/data.py TrainBatches) take the same object and add the paper's augmentation.

`probabilities` is the one inference path for scoring: the softmax of each view, averaged.
"""
import dataclasses

import numpy as np

from alexnet.app.errors import UserError


@dataclasses.dataclass
class Preprocessing:
    mean: np.ndarray            # float32 (S, S, 3) per pixel, or (1, 1, 3) per channel; 0..255 RGB
    input_scale: float          # 1: the paper's 0..255 range; the small and large recipes 1/64
    resize_size: int            # images are brought to this side before cropping
    input_size: int             # the side of the crop the network takes

    # ---- in a checkpoint ---------------------------------------------------------------------------
    def to_checkpoint(self):
        """(arrays, meta): what a checkpoint stores of it."""
        arrays = {"data/mean": np.asarray(self.mean, dtype=np.float32)}
        meta = {"input_scale": float(self.input_scale), "resize_size": int(self.resize_size),
                "input_size": int(self.input_size)}
        return arrays, meta

    @classmethod
    def from_checkpoint(cls, arrays, meta, model, source):
        """The checkpoint's preprocessing for `model` (its sizes); a checkpoint written before the
        input scale was stored ran at 1, the paper's pixels. `source` names the file in errors. A
        mean or scale that no image could be normalised by is refused, not used."""
        mean, scale = arrays.get("data/mean"), meta.get("input_scale", 1.0)
        if mean is None:
            raise UserError(f"{source} has no training mean")
        cls.check_mean(mean, source)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < float("inf")):
            raise UserError(f"{source}: its input_scale {scale!r} is not a finite number > 0")
        return cls(mean.astype(np.float32), float(scale), model.resize_size, model.input_size)

    @staticmethod
    def check_mean(mean, source):
        """A training mean is an RGB image (S, S, 3) or three channel means (1, 1, 3), all finite."""
        if not (mean.ndim == 3 and mean.shape[2] == 3 and mean.shape[0] == mean.shape[1] > 0
                and np.issubdtype(mean.dtype, np.number)):
            raise UserError(f"{source}: its mean has shape {mean.shape} ({mean.dtype}), not (1, 1, 3) or (S, S, 3)")
        if not np.isfinite(mean).all():
            raise UserError(f"{source}: its mean has non-finite values (NaN or infinity)")

    # ---- applying it -------------------------------------------------------------------------------
    def for_side(self, side):
        """The same, for images of side `side`: a per-pixel mean of another size falls back to its
        channel means (a prepared dataset keeps the side it was prepared at)."""
        from alexnet.app.data import fit_mean

        return dataclasses.replace(self, mean=fit_mean(self.mean, side))

    def views(self, imgs, ten_crop=False):
        """uint8 images (N, S, S, 3) -> [float32 network inputs (N, 3, c, c)]: the centre crop, or
        the paper's 10 views."""
        from alexnet.app.data import center_crop_batch, ten_crop_batches

        mean = self.for_side(imgs.shape[1]).mean
        views = (ten_crop_batches(imgs, self.input_size, mean) if ten_crop
                 else [center_crop_batch(imgs, self.input_size, mean)])
        if self.input_scale != 1.0:
            for x in views:
                x *= np.float32(self.input_scale)
        return views

    def inputs(self, imgs):
        """(float32 network inputs of the centre crops, the uint8 crops themselves)."""
        off = (imgs.shape[1] - self.input_size) // 2
        return self.views(imgs)[0], imgs[:, off:off + self.input_size, off:off + self.input_size]

    def decode(self, paths):
        """uint8 (N, resize, resize, 3) of image files, each brought to the resize side; a file
        that is not a readable image is the user's error, named."""
        from alexnet.app.data import decode_image
        from alexnet.app.files import check_input

        imgs = []
        for path in paths:
            check_input(path, "image")          # a FIFO would block Pillow, a device feed it for ever
            try:
                imgs.append(decode_image(path, self.resize_size))
            except Exception as e:          # Pillow's many error types for bad files (app/data.py)
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UserError(f"cannot read image {path}: {reason}") from None
        return np.stack(imgs)


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(model, views, device="cpu"):
    """float64 (N, classes): the softmax of the model's logits for each view, averaged over the views
    (the paper's 10-view prediction; one view: the centre crop)."""
    from alexnet.engine import backend

    probs = 0.0
    for x in views:
        logits = backend.to_numpy(model.forward(backend.to_device(x, device), keep_cache=False))
        probs = probs + softmax(logits.astype(np.float64))
    return probs / len(views)


def check_finite_outputs(values, model, prep):
    """For predict and eval (training says the same as divergence, naming its last good checkpoint):
    finite weights, a mean or an input scale large enough to overflow float32 make NaN outputs,
    refused in one line that names the culprit rather than printed as nan%. NaN from moderate
    values is a bug of ours, and raised as one."""
    from alexnet.engine import backend

    if np.isfinite(values).all():
        return
    size, name = max((float(np.abs(backend.to_numpy(layer.params[key])).max(initial=0.0)), full)
                     for full, layer, key in model.named_parameters())
    mean = float(np.abs(prep.mean).max())
    culprits = [(size, f"largest |weight| {size:.3g} in {name}"), (mean, f"its mean reaches {mean:.3g}"),
                (prep.input_scale, f"its input scale is {prep.input_scale:.3g}")]
    large = [what for value, what in culprits if value > HUGE]
    if not large:
        raise RuntimeError(f"non-finite outputs from a model whose weights, mean and input scale are all "
                           f"moderate ({', '.join(what for _, what in culprits)})")
    raise UserError(f"the model's outputs are not finite (NaN or infinity): {', '.join(large)}, which "
                    f"overflows float32 arithmetic; retrain or import it again")


# no trained weight, pixel mean (0..255) or input scale (<= 1) comes near this
HUGE = 1e6
