"""Train the small AlexNet on the demo data in one page: the loop app/trainer.py runs, without its
background loading, recipes, checkpoints and logs. Read it top to bottom before the trainer.

    python examples/train_minimal.py                     # the demo dataset (drawn on first use)
    python examples/train_minimal.py --train-images 1000 --epochs 2    # a quicker look
"""
import argparse

import numpy as np

from alexnet.app.data import open_dataset
from alexnet.app.demo import ensure_demo
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.models.alexnet import AlexNetSmall
from alexnet.models.registry import sizes

parser = argparse.ArgumentParser(description="the training loop in one page")
parser.add_argument("--data", help="an ImageNet-style folder, train/<class>/*.jpg and val/ (default: the demo)")
parser.add_argument("--train-images", type=int, default=5000, help="how many training images to use")
parser.add_argument("--epochs", type=int, default=8)
args = parser.parse_args()

# 1. The model: AlexNet's layer sequence at 64x64 (models/alexnet.py), He init, no dropout.
side, resize = sizes("alexnet-small")                                     # 64x64 crops of 73x73 images
data = open_dataset(args.data or ensure_demo(), resize)
classes = len(data.classes)
net = AlexNetSmall(num_classes=classes, init="he", seed=0, dropout=0.0)


# 2. The data, decoded once into memory: the central 64x64 of each image, the training set's mean
#    colour subtracted, scaled by 1/64 (about unit spread), channels first (NCHW).
def load(split, count):
    picked = np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)
    images, labels = split.load(picked)                                  # uint8 (N, 73, 73, 3)
    top = (images.shape[1] - side) // 2
    crops = images[:, top:top + side, top:top + side].astype(np.float32)
    return np.ascontiguousarray(((crops - data.mean) / 64).transpose(0, 3, 1, 2)), labels


(x_train, y_train), (x_val, y_val) = load(data.train, args.train_images), load(data.val, 1000)
print(f"{len(x_train)} training and {len(x_val)} validation images of {classes} classes, {x_train.shape[1:]}")

# 3. Overfit one batch first. A correct net and loop drive the loss of 16 images to about 0 within
#    a few dozen steps; if this fails, nothing below will work either (a bug, or a bad learning rate).
loss_fn = SoftmaxCrossEntropy()
optimizer = SGD(net, lr=0.01, momentum=0.9, weight_decay=0.0)
few = np.arange(16) * (len(x_train) // 16)                   # 16 images, spread over the classes
for step in range(1, 301):
    loss = loss_fn.forward(net.forward(x_train[few], train=True), y_train[few])
    net.backward(loss_fn.backward(), need_dx=False)
    optimizer.step()
    if loss < 0.01:
        break
print(f"one batch of 16 overfit: loss {loss:.4f} after {step} steps")
assert loss < 0.05, "the net cannot overfit 16 images: look for a bug before training on more"

# 4. Train: fresh weights, the paper's SGD, shuffled batches of 64, random mirror images.
net = AlexNetSmall(num_classes=classes, init="he", seed=0, dropout=0.0)
optimizer = SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
rng = np.random.default_rng(0)


def accuracy(x, y):
    logits = np.concatenate([net.forward(x[i:i + 250], keep_cache=False) for i in range(0, len(x), 250)])
    return float((logits.argmax(axis=1) == y).mean())


for epoch in range(1, args.epochs + 1):
    order, losses = rng.permutation(len(x_train)), []
    for start in range(0, len(order), 64):
        batch = order[start:start + 64]
        x = np.where(rng.random((len(batch), 1, 1, 1)) < 0.5, x_train[batch], x_train[batch, :, :, ::-1])
        losses.append(loss_fn.forward(net.forward(x, train=True), y_train[batch]))   # forward, loss
        net.backward(loss_fn.backward(), need_dx=False)                               # backward
        optimizer.step()                                                               # update
    print(f"epoch {epoch}: train loss {np.mean(losses):.3f}, validation top-1 {100 * accuracy(x_val, y_val):.1f}%")

# 5. Evaluate: the share of validation images whose highest score is their class (chance: 1/classes).
print(f"validation top-1 {100 * accuracy(x_val, y_val):.1f}% (chance {100 / classes:.1f}%)")
