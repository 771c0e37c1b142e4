"""What tests/test_distributed.py runs under `mpiexec -n 2` (and alone, for the one-process side).

    python tests/mpi_worker.py train64 DATA OUT STEPS BATCH  the real trainer, in float64, STEPS steps
    python tests/mpi_worker.py towers64                      split AlexNet against the whole one (2 ranks)
    python tests/mpi_worker.py die-at STEP ARGV...           `alexnet ARGV`; rank 1 is SIGKILLed inside step STEP
    python tests/mpi_worker.py hang-at STEP ARGV...          `alexnet ARGV`; rank 1 hangs inside step STEP

Not a test module itself (no test_ prefix): each mode is a separate process, as mpiexec starts it.
"""
import json
import os
import signal
import sys
import time

import numpy as np


def train64(data, out, steps, batch):
    """The trainer with a float64 model and batches: 1 process and N ranks must agree to 1e-12."""
    from alexnet.app import distributed
    from alexnet.app.trainer import Trainer
    from conftest import small_config      # this script's folder is first on sys.path
    from alexnet.engine.optim import SGD

    world = distributed.connect()
    cfg = small_config(data, batch_size=int(batch), dropout=0.5, log_every=1)
    trainer = Trainer(cfg, out, stop_after_steps=int(steps), progress=False,
                      strategy=distributed.strategy(world, "data", "cpu"))
    trainer.model.astype(np.float64)
    trainer.optimizer = SGD(trainer.model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            rescale_velocity=cfg.rescale_velocity)
    trainer.schedule.optimizer = trainer.optimizer
    step = trainer._train_step
    trainer._train_step = lambda x, labels, count: step(x.astype(np.float64), labels, count)
    return distributed.guarded(world, trainer.run)


def towers64():
    """Forward, backward and three SGD steps of the split model against the whole groups=2 model,
    float64, dropout on; rank 0 prints the largest relative differences as JSON."""
    from alexnet.engine.comm import TowerExchange, connect
    from alexnet.engine.loss import SoftmaxCrossEntropy
    from alexnet.engine.optim import SGD
    from alexnet.models.alexnet import AlexNetSmall
    from alexnet.models.towers import TowerModel

    world = connect()

    def build():
        return AlexNetSmall(7, init="he", seed=3, dropout=0.5).astype(np.float64)

    whole, split = build(), TowerModel(build(), TowerExchange(world))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3, 64, 64)), rng.integers(0, 7, 6)

    def rel(a, b):
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))

    errors = {"logits": 0.0, "dx": 0.0, "grads": 0.0, "weights": 0.0}
    opt_whole, opt_split = SGD(whole), SGD(split)
    loss_whole, loss_split = SoftmaxCrossEntropy(), SoftmaxCrossEntropy()
    for _ in range(3):
        a, b = whole.forward(x, train=True), split.forward(x, train=True)
        errors["logits"] = max(errors["logits"], rel(a, b))
        loss_whole.forward(a, y)
        loss_split.forward(b, y)
        dx_whole = whole.backward(loss_whole.backward())
        dx_split = split.backward(loss_split.backward())
        errors["dx"] = max(errors["dx"], rel(dx_whole, dx_split))
        grads = split.gather_tensors({name: layer.grads[key] for name, layer, key in split.named_parameters()})
        errors["grads"] = max([errors["grads"]] + [rel(layer.grads[key], grads[name])
                                                   for name, layer, key in whole.named_parameters()])
        opt_whole.step()
        opt_split.step()
    state = split.state_dict()
    errors["weights"] = max(rel(v, state[k]) for k, v in whole.state_dict().items())
    if world.rank == 0:
        print(json.dumps(errors), flush=True)
    return 0


def misbehave(mode, at, argv):
    """`alexnet ARGV` with rank 1 killed (SIGKILL) or hung in the middle of step `at`: after its
    forward, before its gradients reach the other rank."""
    from alexnet.app import trainer
    from alexnet.app.cli import main

    real = trainer.Trainer._train_step

    def step(self, x, labels, count):
        if self.strategy.world.rank == 1 and self.step == at:
            self.model.forward(x, train=True)
            if mode == "die-at":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return real(self, x, labels, count)

    trainer.Trainer._train_step = step
    return main(argv)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "train64":
        sys.exit(train64(*args))
    if mode == "towers64":
        sys.exit(towers64())
    sys.exit(misbehave(mode, int(args[0]), args[1:]))
