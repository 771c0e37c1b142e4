"""Training recipes: the settings that decide whether a run learns at all, chosen together.

    alexnet train --data DIR                  --recipe auto: small below 50,000 training images, else large
    alexnet train --data DIR --recipe paper   the paper's exact recipe (section 5)

Why recipes. The paper's recipe (N(0, 0.01^2) weights with bias 1, raw 0..255 pixels, dropout 0.5,
batch 128) is right for 1.2 million images and 90 epochs. On a user's own folder of a few
thousand images it stays at chance: measured on 1,438 handwritten digits (bench/digits_dataset.py),
8 epochs of alexnet-small end at 10.0% validation top-1, the same as guessing, and the stall warning
only comes after 300 steps. He init on pixels scaled to about unit spread learns in the first
epoch (docs/training.md has the measurements behind every choice below). Any setting given on the
command line overrides its recipe's.

    recipe  init   input scale  dropout        batch  plateau patience  epochs  velocity at an LR drop
    small   he     1/64         0              64     2                 30      rescaled (PyTorch's rule)
    large   he     1/64         0.5            128    1                 90      rescaled (PyTorch's rule)
    paper   paper  1            0.5 (paper's)  128    1                 90      kept (the paper's rule)

`small` drops dropout: on small data it slowed learning so much that short runs ended far below
the runs without it (digits, 8 epochs: 80.5% with dropout 0.5 against 85-91% without).
`large` keeps the paper's dropout, which is what prevents overfitting at ImageNet's scale; it has
not been measured at that scale here. Both rescale the momentum buffer when the learning rate
drops (engine/optim.py rescale_velocity): with the paper's rule the training loss rose for an
epoch after each drop (`alexnet experiment lr-drop`).
"""
from alexnet.app.errors import UserError

SMALL_DATA = 50_000      # training images below which `auto` picks the small-data recipe

RECIPES = {
    "small": dict(init="he", input_scale=1 / 64, dropout=0.0, dropout_variant="inverted", batch_size=64,
                  patience=2, epochs=30, rescale_velocity=True),
    "large": dict(init="he", input_scale=1 / 64, dropout=0.5, dropout_variant="inverted", batch_size=128,
                  patience=1, epochs=90, rescale_velocity=True),
    "paper": dict(init="paper", input_scale=1.0, dropout=0.5, dropout_variant="paper", batch_size=128,
                  patience=1, epochs=90, rescale_velocity=False),
}
CHOICES = ("auto",) + tuple(RECIPES)


def resolve(recipe, train_size):
    """The recipe `auto` stands for on a training set of `train_size` images, or `recipe` itself."""
    if recipe not in CHOICES:
        raise UserError(f"unknown --recipe {recipe!r}: expected one of {', '.join(CHOICES)}")
    if recipe == "auto":
        return "small" if train_size < SMALL_DATA else "large"
    return recipe


def settings(recipe):
    return dict(RECIPES[recipe])
