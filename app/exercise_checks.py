"""The checks behind `alexnet exercise check`: each workbook function on small random float64 inputs,
against the plain loops of layers/reference.py and against central finite differences.

Per function the answer is one of: passed; not implemented (its body still raises
NotImplementedError); failed, with which case, which output, how many entries differ and by how
much (the largest, side by side with the expected value and the finite difference), and a hint
when the error has the pattern of a known mistake. A hint is found by computing the mistake: the
check runs the mistaken version (a pooling gradient sent to every tied maximum, an LRN backward
without the indirect terms, a convolution backward with the unflipped kernel, dropout without its
scale, a softmax without the max subtracted, ...) on the same inputs and says so when the
learner's output is that one.

    spec_list()                     {exercise: the specs of its functions}, easiest first
    check_function(spec, fn, where) one function: a Result
    check_network(module, where)    network.py's backward, on the engine's layer functions
"""
import collections

import numpy as np

from alexnet.engine.gradcheck import numerical_gradient, relative_error
from alexnet.layers import reference as ref

TOLERANCE = 1e-6            # relative error in float64: a correct function is ~1e-12 off, a wrong one O(1)
FD_ENTRIES = 12             # entries per tensor held to finite differences
Result = collections.namedtuple("Result", "function status lines")      # status: passed, not implemented, failed
# args: the case's keys, in the function's order; outputs: names of what it returns; forward
# (function, args) and wrt (output -> the forward's argument it is the gradient of): finite differences
Spec = collections.namedtuple("Spec", "function reference args outputs cases forward wrt mistakes",
                              defaults=(None, None, ()))
# hint: shown when matches(case, yours, expected) is true; yours and expected are {output: array}
Mistake = collections.namedtuple("Mistake", "hint matches")


# ---- comparing -------------------------------------------------------------------------------------------
def close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a) == np.isfinite(b))) and \
        relative_error(np.nan_to_num(a), np.nan_to_num(b)) < TOLERANCE


def same_as(mistaken, output=None):
    """A Mistake test: the learner's output (one, or all) is what `mistaken(case)` computes."""
    def matches(case, yours, expected):
        wrong = mistaken(case)
        wrong = wrong if isinstance(wrong, dict) else {output or next(iter(expected)): wrong}
        return all(close(yours[k], w) and not close(w, expected[k]) for k, w in wrong.items())
    return matches


def describe_difference(name, yours, expected, fd=None):
    """Lines saying how `yours` differs from `expected` (None when it does not): how many entries,
    by how much, and the three largest differences, with fd(flat indices) (finite differences,
    an array of expected's shape) beside them when given."""
    if not isinstance(yours, np.ndarray) and not np.isscalar(yours):
        return [f"{name} is {type(yours).__name__}, expected an array of shape {np.shape(expected)}"]
    single = np.asarray(yours).dtype == np.float32
    yours, expected = np.asarray(yours, np.float64), np.asarray(expected, np.float64)
    if yours.shape != expected.shape:
        turned = " (transposed?)" if yours.ndim == 2 and yours.shape == expected.shape[::-1] else ""
        return [f"{name} has shape {yours.shape}, expected {expected.shape}{turned}"]
    if close(yours, expected):
        return None
    gap = np.abs(yours - expected)
    scale = max(np.abs(np.nan_to_num(expected)).max(), 1e-300)
    broken = np.isfinite(yours) != np.isfinite(expected)
    wrong = broken | (gap > TOLERANCE * scale)
    finite_gap = np.where(np.isfinite(gap), gap, 0.0)
    line = f"{name} differs at {int(wrong.sum())} of {wrong.size} entries"
    if (wrong & ~broken).any():
        line += (f", largest |yours - expected| {finite_gap.max():.3g} ({finite_gap.max() / scale:.2g} of the "
                 f"largest expected)")
    if broken.any():
        line += f"; {int(broken.sum())} of yours are inf or nan where the expected ones are finite"
    lines = [line + ("; yours is float32: keep the inputs' float64 (np.zeros_like(x), not np.zeros(..., np.float32))"
                     if single else "")]
    shown = np.argsort(-np.where(broken, np.inf, finite_gap).reshape(-1), kind="stable")[:3]
    numeric = fd(shown).reshape(-1) if fd is not None else None
    for flat in shown if yours.ndim else [0]:
        where = np.unravel_index(flat, yours.shape)
        numeric_text = "" if numeric is None else f", finite difference {numeric[flat]:+.6g}"
        label = f"{name}[{', '.join(map(str, where))}]" if yours.ndim else name
        lines.append(f"    {label}: yours {yours[where]:+.6g}, expected {expected[where]:+.6g}{numeric_text}")
    return lines


# ---- running one function -----------------------------------------------------------------------------
class WrongReturn(Exception):
    """A function returned something of another kind than its outputs (one array, or a tuple of them)."""


def as_outputs(spec, value):
    """{output name: value} of what a function returned (a tuple for several outputs)."""
    if len(spec.outputs) == 1:
        return {spec.outputs[0]: value}
    if not isinstance(value, tuple) or len(value) != len(spec.outputs):
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise WrongReturn(f"returned {got}, expected a tuple ({', '.join(spec.outputs)})")
    return dict(zip(spec.outputs, value))


def finite_differences(spec, case):
    """numeric(output, flat indices) -> the central differences of spec.forward at those entries of
    the input `output` is the gradient of (NaN elsewhere); None when the function returns no
    gradient or the case has kinks (ties)."""
    if spec.forward is None or case.get("no_fd"):
        return None
    forward, args = spec.forward
    case = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.items()}

    def f():
        out = forward(*(case[a] for a in args))
        return float(out) if np.isscalar(out) else float(np.sum(out * case["dout"]))

    def numeric(output, indices):
        return numerical_gradient(f, case[spec.wrt[output]], 1e-5, indices)
    return numeric


def run_case(spec, fn, case, rng):
    """(problem lines, hints) of one case; no lines when it passed. Each gradient is held to the
    reference loops in full and to finite differences at FD_ENTRIES random entries; a difference
    is shown with the finite differences at the entries shown."""
    args = [np.array(case[a]) if isinstance(case[a], np.ndarray) else case[a] for a in spec.args]
    yours = as_outputs(spec, fn(*args))
    expected = as_outputs(spec, spec.reference(*(case[a] for a in spec.args)))
    numeric = finite_differences(spec, case)
    lines = []
    for name, want in expected.items():
        fd = (lambda flat, name=name: numeric(name, flat)) if numeric and name in spec.wrt else None
        problem = describe_difference(name, yours[name], want, fd)
        if problem is None and fd is not None:
            picked = rng.choice(np.size(want), min(FD_ENTRIES, np.size(want)), replace=False)
            problem = describe_difference(f"{name} (at {len(picked)} entries, against finite differences)",
                                          np.asarray(yours[name]).reshape(-1)[picked],
                                          fd(picked).reshape(-1)[picked])
        lines += problem or []
    hints = [m.hint for m in spec.mistakes if _safe_match(m, case, yours, expected)] if lines else []
    return lines, hints


def _safe_match(mistake, case, yours, expected):
    try:
        return mistake.matches(case, yours, expected)
    except (ValueError, TypeError, IndexError):     # yours has a shape the mistaken version does not
        return False


def check_function(spec, fn, where):
    """A Result for workbook function `fn` (defined in the file `where`, named in messages): the
    first failing case in detail, the other failing cases by name, the hints of all of them."""
    from alexnet.app.learner_passes import where_in

    rng = np.random.default_rng(7)
    failing, hints = [], []
    for label, case in spec.cases():
        try:
            with np.errstate(all="ignore"):
                lines, found = run_case(spec, fn, case, rng)
        except NotImplementedError:
            return Result(spec.function, "not implemented",
                          [f"not implemented yet: {spec.function} in {where} still raises NotImplementedError; "
                           f"write its body from the math in the file's docstring"])
        except WrongReturn as e:
            lines, found = [str(e)], []
        except Exception as e:              # the learner's code: say where it failed, as one line
            lines, found = [f"raised {type(e).__name__}: {e} ({where_in(e, where)}in {where})"], []
        if lines:
            failing.append((label, lines))
            hints += [h for h in found if h not in hints]
    if not failing:
        return Result(spec.function, "passed", [])
    (label, lines), others = failing[0], [other for other, _ in failing[1:]]
    report = [f"case {label}:"] + ["  " + line for line in lines]
    if others:
        report.append(f"also fails on: {'; '.join(others)}")
    return Result(spec.function, "failed", report + [f"hint: {h}" for h in hints])


# ---- the cases, and the known mistakes ------------------------------------------------------------------
def _rng(seed):
    return np.random.default_rng(seed)


def relu_cases():
    r = _rng(1)
    x = r.standard_normal((2, 3, 4, 5))
    x += np.sign(x) * 0.1                                      # nothing within eps of the kink
    yield "x (2, 3, 4, 5)", {"x": x, "dout": r.standard_normal(x.shape)}


def dense_cases():
    r = _rng(2)
    yield "x (3, 7), W (5, 7)", {"x": r.standard_normal((3, 7)), "W": r.standard_normal((5, 7)),
                                 "b": r.standard_normal(5), "dout": r.standard_normal((3, 5))}


def softmax_cases():
    r = _rng(3)
    yield "logits (4, 6)", {"logits": r.standard_normal((4, 6)), "labels": np.array([1, 0, 5, 3])}
    yield "large logits (3, 5), around 1000", {"logits": 1000 + 30 * r.standard_normal((3, 5)),
                                               "labels": np.array([4, 0, 2])}


def dropout_cases():
    r = _rng(4)
    for p, train, variant in ((0.5, True, "inverted"), (0.3, True, "paper"), (0.5, False, "inverted"),
                              (0.3, False, "paper")):
        x = r.standard_normal((4, 6))
        yield (f"{variant} variant, p={p}, {'training' if train else 'inference'}",
               {"x": x, "keep": r.random(x.shape) >= p, "p": p, "train": train, "variant": variant,
                "dout": r.standard_normal(x.shape)})


def maxpool_cases():
    r = _rng(5)
    for shape in ((2, 3, 9, 9), (1, 2, 8, 7)):
        n = int(np.prod(shape))
        x = (r.permutation(n) - n / 2).reshape(shape) * 0.01    # distinct values: no ties near the check
        dout = r.standard_normal((shape[0], shape[1], (shape[2] - 3) // 2 + 1, (shape[3] - 3) // 2 + 1))
        yield f"x {shape}, 3x3 stride 2", {"x": x, "dout": dout, "kernel_size": 3, "stride": 2}
    # windows (0, 0), (1, 0) and (1, 1) each hold their maximum twice; (0, 2) is the maximum of (0, 1)
    ties = np.array([[[[2., 0, 2, 1, 1], [0, 1, 0, 1, 1], [0, 0, 1, 0, 0], [4, 0, 0, 5, 0], [0, 4, 0, 0, 5]]]])
    yield "x (1, 1, 5, 5) with tied maxima", {"x": ties, "dout": np.array([[[[1., 10], [100, 1000]]]]),
                                              "kernel_size": 3, "stride": 2, "no_fd": True}


def conv_cases():
    r = _rng(6)
    for shape, (O, K, S, P, groups) in (((2, 4, 7, 7), (6, 3, 2, 1, 2)), ((1, 3, 6, 5), (2, 3, 1, 0, 1)),
                                         ((1, 2, 9, 9), (4, 5, 4, 0, 1))):
        C = shape[1]
        OH, OW = (shape[2] + 2 * P - K) // S + 1, (shape[3] + 2 * P - K) // S + 1
        yield (f"x {shape}, W ({O}, {C // groups}, {K}, {K}), stride {S}, padding {P}, groups {groups}",
               {"x": r.standard_normal(shape), "W": r.standard_normal((O, C // groups, K, K)),
                "b": r.standard_normal(O), "stride": S, "padding": P, "groups": groups,
                "dout": r.standard_normal((shape[0], O, OH, OW))})


def lrn_cases():
    r = _rng(7)
    for shape, (size, alpha, beta, k) in (((2, 7, 3, 3), (5, 1.0, 0.75, 1.0)), ((1, 4, 2, 3), (3, 0.5, 1.3, 1.5)),
                                          ((2, 7, 2, 2), (5, 1e-4, 0.75, 2.0))):
        yield (f"x {shape}, size {size}, alpha {alpha:g}, beta {beta:g}, k {k:g}",
               {"x": r.standard_normal(shape), "dout": r.standard_normal(shape), "size": size, "alpha": alpha,
                "beta": beta, "k": k})


def pool_windows(case):
    """[(window index (n, c, i, j), its slice of x)] of a max-pool case."""
    K, S = case["kernel_size"], case["stride"]
    for n, c, i, j in np.ndindex(case["dout"].shape):
        yield (n, c, i, j), (n, c, slice(S * i, S * i + K), slice(S * j, S * j + K))


def pool_to_every_maximum(case):
    dx = np.zeros_like(case["x"])
    for index, window in pool_windows(case):
        dx[window] += case["dout"][index] * (case["x"][window] == case["x"][window].max())
    return dx


def pool_overwritten(case, yours, expected):
    """Yours is right wherever one window picked the input, and wrong only at inputs that are the
    first maximum of two or more windows: their gradients were assigned, not added."""
    picks = np.zeros(case["x"].shape, int)
    for index, (n, c, rows, cols) in pool_windows(case):
        p, q = np.unravel_index(np.argmax(case["x"][n, c, rows, cols]), (case["kernel_size"],) * 2)
        picks[n, c, rows.start + p, cols.start + q] += 1
    dx, want = np.asarray(yours["dx"], np.float64), expected["dx"]
    wrong = ~np.isclose(dx, want, rtol=0, atol=TOLERANCE * np.abs(want).max())
    return bool(wrong.any()) and bool(np.all(picks[wrong] >= 2))


def lrn_scale(case):
    """s = k + alpha * (the window sum of x^2 over channels), the forward's s_c."""
    x, half = case["x"], case["size"] // 2
    squares = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    window = sum(squares[:, j:j + x.shape[1]] for j in range(2 * half + 1))
    return case["k"] + case["alpha"] * window


def lrn_without_indirect_terms(case):
    return case["dout"] * lrn_scale(case) ** -case["beta"]


def lrn_own_channel_only(case):
    s, x, a, b = lrn_scale(case), case["x"], case["alpha"], case["beta"]
    return case["dout"] * (s ** -b - 2 * a * b * x * x * s ** (-b - 1))


def lrn_window(case, change):
    """lrn forward and backward with a window `change` channels wider on each side."""
    wider = dict(case, size=case["size"] + 2 * change)
    return {"out": ref.lrn_forward(wider["x"], wider["size"], wider["alpha"], wider["beta"], wider["k"]),
            "dx": ref.lrn_backward(wider["x"], wider["dout"], wider["size"], wider["alpha"], wider["beta"], wider["k"])}


def lrn_window_mistakes(output):
    """A window one channel too wide, or too narrow, on each side: LRN's forward ("out") or backward ("dx")."""
    return tuple(Mistake(LRN_WINDOW, same_as(lambda case, d=d: lrn_window(case, d)[output])) for d in (1, -1))


def non_finite_where_expected_finite(case, yours, expected):
    return any(not np.all(np.isfinite(np.asarray(yours[k], np.float64))) and np.all(np.isfinite(expected[k]))
               for k in expected)


def scaled_by_batch(case, yours, expected):
    """Yours is N times the mean's value: a sum over the batch, not its mean."""
    N = len(case["labels"])
    return all(close(np.asarray(yours[k], np.float64), N * np.asarray(v)) for k, v in expected.items())


def dropout_unscaled(key):
    """Dropout's `key` ("x" forward, "dout" backward) with the mask but none of the variant's
    scaling (1/(1-p) in inverted training, 1-p at the paper's inference)."""
    return lambda case: case[key] * case["keep"] if case["train"] else case[key]


def dropout_mask_at_inference(key):
    """Dropout's inference (train=False) with the mask applied; nothing in training cases."""
    def mistaken(case):
        if case["train"]:
            return np.full(case[key].shape, np.nan)          # matches no output: not this mistake's case
        return case[key] * case["keep"] * (1.0 if case["variant"] == "inverted" else 1 - case["p"])
    return mistaken


RELU_FROM_DOUT = "the mask comes from dout; it must come from the forward's input: the unit was on where x > 0"
SOFTMAX_OVERFLOW = ("exp() overflowed: subtract each row's maximum from its logits before exp (it cancels in p, "
                    "and every exp() is then at most 1)")
SOFTMAX_MEAN = "yours is N times the expected value: the loss is the mean over the batch, so everything carries a 1/N"
DROPOUT_UNSCALED = ("dropout not scaled: inverted dropout multiplies the kept units by 1/(1-p) while training (its "
                    "backward too); the paper's variant multiplies every unit by (1-p) at inference")
DROPOUT_MASKED_AT_INFERENCE = "at inference (train=False) no unit is dropped: the mask is for training only"
POOL_EVERY_MAXIMUM = ("a window sent its gradient to every input equal to its maximum: with ties only the first "
                      "maximum in row-major order gets it (the max returns one value; np.argmax finds the first)")
POOL_OVERWRITTEN = ("an input that is the maximum of two overlapping windows receives the sum of their gradients: "
                    "add (+=) instead of assigning")
CONV_UNFLIPPED = ("dx is what the unflipped kernel gives: the input gradient is dout convolved with W turned by 180 "
                  "degrees, W[o, c, K-1-p, K-1-q] (docs/backprop.md); adding dout[n, o, i, j] * W[o, c, p, q] into "
                  "dxpad[n, c0(g) + c, S*i + p, S*j + q] for every (o, i, j, p, q) gets the flip right by itself")
LRN_NO_INDIRECT = ("LRN without the indirect term: dx is only dout * s^(-beta); b_j also depends on a_c through "
                   "s_j for every j whose window holds c")
LRN_OWN_CHANNEL = ("only the channel's own scale is differentiated: a_c also sits in the windows of its neighbours "
                   "j and changes their outputs b_j through s_j; sum over j in win(c)")
LRN_WINDOW = "the window is off by one channel on each side: win(c) = max(0, c - size//2) .. min(C-1, c + size//2)"


def spec_list():
    """The specs of every workbook function, by exercise (each a list, forward first)."""
    conv_args = ("x", "W", "b", "stride", "padding", "groups")
    lrn_args = ("x", "size", "alpha", "beta", "k")
    dropout_args = ("keep", "p", "train", "variant")
    unflipped = same_as(lambda c: ref.conv_backward(c["x"], c["W"][:, :, ::-1, ::-1], c["dout"], c["stride"],
                                                    c["padding"], c["groups"])[0], "dx")
    return {
        "relu": [Spec("relu_forward", ref.relu_forward, ("x",), ("out",), relu_cases),
                 Spec("relu_backward", ref.relu_backward, ("x", "dout"), ("dx",), relu_cases,
                      (ref.relu_forward, ("x",)), {"dx": "x"},
                      (Mistake(RELU_FROM_DOUT, same_as(lambda c: c["dout"] * (c["dout"] > 0))),))],
        "dense": [Spec("dense_forward", ref.dense_forward, ("x", "W", "b"), ("out",), dense_cases),
                  Spec("dense_backward", ref.dense_backward, ("x", "W", "dout"), ("dx", "dW", "db"), dense_cases,
                       (ref.dense_forward, ("x", "W", "b")), {"dx": "x", "dW": "W", "db": "b"})],
        "softmax": [Spec("softmax_xent_forward", ref.softmax_xent_forward, ("logits", "labels"), ("loss",),
                         softmax_cases, mistakes=(Mistake(SOFTMAX_OVERFLOW, non_finite_where_expected_finite),
                                                  Mistake(SOFTMAX_MEAN, scaled_by_batch))),
                    Spec("softmax_xent_backward", ref.softmax_xent_backward, ("logits", "labels"), ("dlogits",),
                         softmax_cases, (ref.softmax_xent_forward, ("logits", "labels")), {"dlogits": "logits"},
                         (Mistake(SOFTMAX_OVERFLOW, non_finite_where_expected_finite),
                          Mistake(SOFTMAX_MEAN, scaled_by_batch)))],
        "dropout": [Spec("dropout_forward", ref.dropout_forward, ("x",) + dropout_args, ("out",), dropout_cases,
                         mistakes=(Mistake(DROPOUT_UNSCALED, same_as(dropout_unscaled("x"))),
                                   Mistake(DROPOUT_MASKED_AT_INFERENCE, same_as(dropout_mask_at_inference("x"))))),
                    Spec("dropout_backward", ref.dropout_backward, ("dout",) + dropout_args, ("dx",), dropout_cases,
                         (ref.dropout_forward, ("x",) + dropout_args), {"dx": "x"},
                         (Mistake(DROPOUT_UNSCALED, same_as(dropout_unscaled("dout"))),
                          Mistake(DROPOUT_MASKED_AT_INFERENCE, same_as(dropout_mask_at_inference("dout")))))],
        "maxpool": [Spec("maxpool_forward", ref.maxpool_forward, ("x", "kernel_size", "stride"), ("out",),
                         maxpool_cases),
                    Spec("maxpool_backward", ref.maxpool_backward, ("x", "dout", "kernel_size", "stride"), ("dx",),
                         maxpool_cases, (ref.maxpool_forward, ("x", "kernel_size", "stride")), {"dx": "x"},
                         (Mistake(POOL_EVERY_MAXIMUM, same_as(pool_to_every_maximum)),
                          Mistake(POOL_OVERWRITTEN, pool_overwritten)))],
        "conv": [Spec("conv_forward", ref.conv_forward, conv_args, ("out",), conv_cases),
                 Spec("conv_backward", ref.conv_backward, ("x", "W", "dout", "stride", "padding", "groups"),
                      ("dx", "dW", "db"), conv_cases, (ref.conv_forward, conv_args), {"dx": "x", "dW": "W", "db": "b"},
                      (Mistake(CONV_UNFLIPPED, unflipped),))],
        "lrn": [Spec("lrn_forward", ref.lrn_forward, lrn_args, ("out",), lrn_cases,
                     mistakes=lrn_window_mistakes("out")),
                Spec("lrn_backward", ref.lrn_backward, ("x", "dout") + lrn_args[1:], ("dx",), lrn_cases,
                     (ref.lrn_forward, lrn_args), {"dx": "x"},
                     (Mistake(LRN_NO_INDIRECT, same_as(lrn_without_indirect_terms)),
                      Mistake(LRN_OWN_CHANNEL, same_as(lrn_own_channel_only))) + lrn_window_mistakes("dx"))],
    }


# ---- the whole network -----------------------------------------------------------------------------
def network_case():
    """(net, x, labels, masks): AlexNet's layer sequence at gradient-check size in float64, a batch
    of 2, and the dropout masks its next training forward draws."""
    from alexnet.layers import Dropout
    from alexnet.models.alexnet import tiny_alexnet

    net = tiny_alexnet(num_classes=5, seed=3).astype(np.float64)
    r = _rng(8)
    x, labels = r.standard_normal((2, 3, 31, 31)), np.array([1, 4])
    shapes = {name: shape for name, _, shape, _, _ in net.summary_rows((3, 31, 31))}
    before = net.rng_state()
    masks = {layer.name: layer.next_mask((2,) + shapes[layer.name]) for layer in net.layers
             if isinstance(layer, Dropout)}
    net.set_rng_state(before)                    # the engine's forward below draws the same masks
    return net, x, labels, masks


def check_network(module, where):
    """[Result of backward] for network.py, run on the engine's layer functions and held to the
    engine's Sequential (the same net, weights and masks); a Result of forward before it when the
    given forward no longer computes the logits."""
    from alexnet.app.learner_passes import architecture, engine_ops, where_in
    from alexnet.engine.loss import SoftmaxCrossEntropy

    net, x, labels, masks = network_case()
    crit = SoftmaxCrossEntropy()
    expected_logits = net.forward(x, train=True)
    crit.forward(expected_logits, labels)
    dlogits = crit.backward()
    expected_dx = net.backward(dlogits)
    expected = {full: layer.grads[key] for full, layer, key in reversed(list(net.named_parameters()))}
    expected["dx"] = expected_dx                # last: the order the backward computes them in
    params = {full: layer.params[key] for full, layer, key in net.named_parameters()}
    results, running = [], "forward"
    try:
        logits, inputs = module.forward(engine_ops(), params, architecture(net), x, masks, True)
        problem = describe_difference("logits", logits, expected_logits)
        if problem:                         # forward is given: only a changed one is reported
            results.append(Result("forward", "failed", problem + ["the forward no longer computes the network's "
                                                                  "logits: compare it with a fresh workbook's"]))
        running = "backward"
        dx, grads = module.backward(engine_ops(), params, architecture(net), inputs, masks, dlogits, True)
    except NotImplementedError:
        return results + [Result("backward", "not implemented",
                                 [f"not implemented yet: backward in {where} still raises NotImplementedError; "
                                  f"write it, fc8 back to conv1"])]
    except Exception as e:                  # the learner's code
        return results + [Result(running, "failed",
                                 [f"raised {type(e).__name__}: {e} ({where_in(e, where)}in {where})"])]
    return results + [network_backward_result({"dx": dx, **(grads if isinstance(grads, dict) else {})}, expected)]


def network_backward_result(yours, expected):
    """The backward's Result: the gradients from fc8's down to dx; the first that differs in
    detail, the others by name, and where to look."""
    wrong = {}
    for name, want in expected.items():
        problem = [f"grads has no {name!r}"] if name not in yours else describe_difference(name, yours[name], want)
        if problem:
            wrong[name] = problem
    if not wrong:
        return Result("backward", "passed", [])
    first, *others = wrong
    lines = wrong[first] + ([f"also differ: {', '.join(others)}"] if others else [])
    if first == "dx":
        lines.append("hint: every parameter's gradient is right and dx is not: look at what conv1's backward "
                     "returns for its input")
    else:
        layer = first.split(".")[0]
        lines.append(f"hint: going back from fc8, the first gradient that differs is {first}: everything above "
                     f"{layer} is right, so look at the lines from {layer}'s backward up to the layer above it "
                     f"(the gradient it receives, and the input and settings it is given)")
    return Result("backward", "failed", lines)
