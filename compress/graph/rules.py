"""Label-propagation rules, one per ATen op family of torch.export's graph.

A rule reads the labels of its tensor arguments (one id array per dimension), unifies the
dimensions the op couples, and returns the labels of its output. Ops without a rule block
every labelled dimension they touch and are reported (module and op), so an unknown op
can make a model less prunable but never wrong.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch

from compress.graph.labels import UNLABELED, LabelSpace

Labels = list  # list[np.ndarray], one array per dimension


class Ctx:
    def __init__(self) -> None:
        self.ls = LabelSpace()
        self.labels: dict[Any, Any] = {}
        self.param_of: dict[Any, str] = {}
        self.roles: dict[tuple[str, int], str] = {}
        self.unsupported: list[tuple[str, str]] = []

    # --- helpers used by rules ---
    def L(self, arg) -> Labels | None:
        if isinstance(arg, torch.fx.Node):
            return self.labels.get(arg)
        return None

    def val(self, arg):
        return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None

    def none_like(self, shape) -> Labels:
        return [LabelSpace.none(s) for s in shape]

    def mark(self, arg, dim: int, role: str) -> None:
        name = self.param_of.get(arg)
        if name is not None:
            ndim = len(self.labels[arg])
            self.roles[(name, dim % ndim)] = role

    def unify(self, a, b, why: str) -> None:
        self.ls.unify(a, b, why)

    def block_all(self, labels, why: str) -> None:
        for arr in labels:
            self.ls.block(arr, why)


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, typ = list(stack.values())[-1]
        tname = getattr(typ, "__name__", str(typ)).split(".")[-1].strip("'>")
        return f"{path or '<root>'} ({tname})"
    return "<root>"


def op_name(node) -> str:
    t = node.target
    if t is operator.getitem:
        return "getitem"
    s = str(t)
    if s.startswith("aten."):
        name = s.split(".")[1]
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return getattr(t, "__name__", s)


def _tensor_args(node):
    out = []
    for a in node.args:
        if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.fx.Node) and isinstance(x.meta.get("val"), torch.Tensor))
    for a in node.kwargs.values():
        if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor):
            out.append(a)
    return out


def _out_shape(node):
    v = node.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


# ---------------------------------------------------------------- elementwise
def broadcast(ctx: Ctx, node, inputs: list[Labels], out_shape) -> Labels:
    rank = len(out_shape)
    out = []
    for d in range(rank):
        n = out_shape[d]
        full, ones = [], []
        for lab in inputs:
            k = d - (rank - len(lab))
            if k < 0:
                continue
            (full if len(lab[k]) == n else ones).append(lab[k])
        if full:
            for other in full[1:]:
                ctx.unify(full[0], other, f"{op_name(node)} in {_where(node)}")
            if n > 1:
                for o in ones:
                    ctx.ls.block(o, f"broadcast of a single channel in {_where(node)}")
            out.append(full[0])
        else:
            out.append(LabelSpace.none(n))
    return out


def r_elementwise(ctx, node):
    ins = [ctx.L(a) for a in _tensor_args(node)]
    ins = [x for x in ins if x is not None]
    shape = _out_shape(node)
    if not ins:
        return ctx.none_like(shape)
    return broadcast(ctx, node, ins, shape)


def r_unary(ctx, node):
    x = ctx.L(node.args[0])
    shape = _out_shape(node)
    if x is None or len(x) != len(shape):
        return ctx.none_like(shape)
    return list(x)


def r_tuple_unary(ctx, node):  # native_dropout -> (out, mask)
    x = ctx.L(node.args[0])
    return [list(x), list(x)]


def r_fresh(ctx, node):
    v = node.meta.get("val")
    if isinstance(v, (tuple, list)):
        return [ctx.none_like(t.shape) if isinstance(t, torch.Tensor) else None for t in v]
    return ctx.none_like(v.shape)


def r_block(ctx, node):
    """Known op that mixes channels by position: block its labelled inputs."""
    for a in _tensor_args(node):
        lab = ctx.L(a)
        if lab is not None:
            ctx.block_all(lab, f"{op_name(node)} in {_where(node)}")
    return r_fresh(ctx, node)


def r_unknown(ctx, node):
    touched = False
    for a in _tensor_args(node):
        lab = ctx.L(a)
        if lab is not None and any((arr >= 0).any() for arr in lab):
            touched = True
            ctx.block_all(lab, f"unsupported op {op_name(node)} in {_where(node)}")
    if touched:
        ctx.unsupported.append((_where(node), op_name(node)))
    return r_fresh(ctx, node)


# ---------------------------------------------------------------- layers
def _conv(ctx, node, x, w, b, transposed: bool, groups: int):
    X, W = ctx.L(x), ctx.L(w)
    why = f"conv in {_where(node)}"
    cin = len(X[1])
    if not transposed:
        o, i = len(W[0]), len(W[1])
        if groups == 1:
            ctx.unify(W[1], X[1], why)
            ctx.mark(w, 0, "producer")
            ctx.mark(w, 1, "reader")
        elif groups == cin and i == 1:  # depthwise (channel multiplier o // cin)
            ctx.unify(np.repeat(X[1], o // cin), W[0], why)
            ctx.mark(w, 0, "reader")
        elif groups >= 4:  # grouped: whole groups go (the per-group shape the kernel runs stays)
            og, ig = o // groups, cin // groups
            for j in range(groups):
                ctx.ls.merge_all(np.concatenate([X[1][j * ig:(j + 1) * ig], W[0][j * og:(j + 1) * og]]), why)
            ctx.mark(w, 0, "producer")
        else:  # 2-3 groups: the same local position is removed from every group
            og = o // groups
            ctx.unify(np.tile(W[1], groups), X[1], why)
            ctx.unify(np.tile(W[0][:og], groups), W[0], why)
            ctx.mark(w, 0, "producer")
            ctx.mark(w, 1, "reader")
        out1 = W[0]
    else:
        if groups != 1:
            return r_unknown(ctx, node)
        ctx.unify(W[0], X[1], why)
        ctx.mark(w, 1, "producer")
        ctx.mark(w, 0, "reader")
        out1 = W[1]
    if b is not None:
        ctx.unify(ctx.L(b)[0], out1, why)
    shape = _out_shape(node)
    return [X[0], out1] + [LabelSpace.none(s) for s in shape[2:]]


def r_conv(ctx, node):  # conv1d/2d/3d(x, w, b, stride, padding, dilation, groups)
    a = list(node.args) + [None] * 7
    groups = node.kwargs.get("groups", a[6] if a[6] is not None else 1)
    b = node.kwargs.get("bias", a[2])
    if len(_out_shape(node)) != len(ctx.L(a[0])):  # unbatched conv
        return r_unknown(ctx, node)
    return _conv(ctx, node, a[0], a[1], b, False, groups)


def r_conv_transpose(ctx, node):  # (x, w, b, stride, padding, output_padding, groups, dilation)
    a = list(node.args) + [None] * 8
    groups = a[6] if a[6] is not None else 1
    return _conv(ctx, node, a[0], a[1], a[2], True, groups)


def r_convolution(ctx, node):  # (x, w, b, stride, padding, dilation, transposed, output_padding, groups)
    a = node.args
    return _conv(ctx, node, a[0], a[1], a[2], bool(a[6]), a[8])


def r_linear(ctx, node):
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    X, W = ctx.L(x), ctx.L(w)
    why = f"linear in {_where(node)}"
    ctx.unify(W[1], X[-1], why)
    ctx.mark(w, 0, "producer")
    ctx.mark(w, 1, "reader")
    if b is not None:
        ctx.unify(ctx.L(b)[0], W[0], why)
    return list(X[:-1]) + [W[0]]


def r_embedding(ctx, node):  # embedding(weight, indices, ...)
    w, idx = node.args[0], node.args[1]
    W, I = ctx.L(w), ctx.L(idx)
    ctx.mark(w, 1, "producer")
    ctx.ls.block(W[0], f"vocabulary of {_where(node)}")
    return list(I) + [W[1]]


def r_batch_norm(ctx, node):  # batch_norm / _native_batch_norm_legit_no_training (x, w, b, mean, var, ...)
    x = node.args[0]
    X = ctx.L(x)
    for p in node.args[1:5]:
        if isinstance(p, torch.fx.Node):
            ctx.unify(ctx.L(p)[0], X[1], f"batch_norm in {_where(node)}")
    out = list(X)
    v = node.meta.get("val")
    if isinstance(v, (tuple, list)):
        return [out] + [ctx.none_like(t.shape) for t in v[1:]]
    return out


def r_layer_norm(ctx, node):  # layer_norm(x, normalized_shape, w, b, eps)
    X = ctx.L(node.args[0])
    k = len(node.args[1])
    why = f"layer_norm statistics over channels in {_where(node)}"
    for d in range(len(X) - k, len(X)):
        ctx.ls.block(X[d], why)
    for p in node.args[2:4]:
        if isinstance(p, torch.fx.Node):
            P = ctx.L(p)
            for j in range(k):
                ctx.unify(P[j], X[len(X) - k + j], why)
    out = list(X)
    v = node.meta.get("val")
    if isinstance(v, (tuple, list)):
        return [out] + [ctx.none_like(t.shape) for t in v[1:]]
    return out


def r_group_norm(ctx, node):  # group_norm(x, num_groups, w, b, eps): whole groups only
    X = ctx.L(node.args[0])
    g = node.args[1]
    c = len(X[1])
    per = c // g
    why = f"group_norm in {_where(node)}"
    for i in range(g):
        ctx.ls.merge_all(X[1][i * per:(i + 1) * per], why)
    for p in node.args[2:4]:
        if isinstance(p, torch.fx.Node):
            ctx.unify(ctx.L(p)[0], X[1], why)
    return list(X)


def _reduce(ctx, node, dims, keepdim):
    X = ctx.L(node.args[0])
    n = len(X)
    dims = list(range(n)) if dims is None or dims == [] else [d % n for d in dims]
    for d in dims:
        ctx.ls.block(X[d], f"{op_name(node)} over channels in {_where(node)}")
    shape = _out_shape(node)
    if keepdim:
        return [LabelSpace.none(1) if d in dims else X[d] for d in range(n)]
    out = [X[d] for d in range(n) if d not in dims]
    return out if len(out) == len(shape) else ctx.none_like(shape)


def r_reduce(ctx, node):  # mean/sum/amax(x, dims, keepdim)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is not None and not isinstance(dims, (list, tuple)):  # e.g. sum(x, dtype)
        dims = None
    return _reduce(ctx, node, dims, keepdim)


def r_softmax(ctx, node):  # softmax(x, dim, ...)
    X = ctx.L(node.args[0])
    ctx.ls.block(X[node.args[1] % len(X)], f"{op_name(node)} over channels in {_where(node)}")
    return list(X)


def r_pool(ctx, node, spatial: int):
    X = ctx.L(node.args[0])
    v = node.meta.get("val")
    shape = v[0].shape if isinstance(v, (tuple, list)) else v.shape
    out = list(X[: len(X) - spatial]) + [LabelSpace.none(s) for s in shape[len(X) - spatial:]]
    if isinstance(v, (tuple, list)):
        return [out] + [ctx.none_like(t.shape) for t in v[1:]]
    return out


# ---------------------------------------------------------------- shapes
def reshape_labels(ctx, node, X: Labels, in_shape, out_shape, inferred: frozenset = frozenset()) -> Labels:
    """`inferred`: output dims given as -1. One of extent 1 is still a split: view(b, t, -1, hd) with
    a single head must merge the head's channels, since hd is a constant the pruned model keeps."""
    why = f"reshape in {_where(node)}"
    out: list = [None] * len(out_shape)
    ins = [d for d in range(len(in_shape)) if in_shape[d] != 1]
    outs = [d for d in range(len(out_shape)) if out_shape[d] != 1 or d in inferred]
    for d in range(len(in_shape)):
        if in_shape[d] == 1 and (X[d] >= 0).any():
            ctx.ls.block(X[d], why)
    a = b = 0
    while a < len(ins) and b < len(outs):
        ga, gb = [ins[a]], [outs[b]]
        pa, pb = in_shape[ins[a]], out_shape[outs[b]]
        a, b = a + 1, b + 1
        while pa != pb:
            if pa < pb:
                ga.append(ins[a]); pa *= in_shape[ins[a]]; a += 1
            else:
                gb.append(outs[b]); pb *= out_shape[outs[b]]; b += 1
        labelled = [d for d in ga if (X[d] >= 0).any()]
        if len(ga) == 1:
            flat = X[ga[0]]
        elif not labelled:
            flat = LabelSpace.none(pa)
        elif len(labelled) > 1:
            for d in labelled:
                ctx.ls.block(X[d], why + " (merges two channel dimensions)")
            flat = LabelSpace.none(pa)
        else:
            sizes = [in_shape[d] for d in ga]
            k = ga.index(labelled[0])
            grid = np.indices(sizes)[k].reshape(-1)
            flat = X[labelled[0]][grid]
        if len(gb) == 1:
            out[gb[0]] = flat
        else:
            rows = flat.reshape(out_shape[gb[0]], -1)
            reps = np.array([ctx.ls.merge_all(r, why) for r in rows], dtype=np.int64)
            out[gb[0]] = reps
            for d in gb[1:]:
                out[d] = LabelSpace.none(out_shape[d])
    for d in range(len(out_shape)):
        if out[d] is None:
            out[d] = LabelSpace.none(out_shape[d])
    return out


def r_reshape(ctx, node):
    x = node.args[0]
    in_shape, out_shape = tuple(ctx.val(x).shape), _out_shape(node)
    inferred: set[int] = set()
    name = op_name(node)
    if name in ("view", "reshape", "_unsafe_view") and len(node.args) > 1:
        inferred = {d for d, s in enumerate(node.args[1]) if isinstance(s, int) and s == -1}
    elif name == "unflatten" and len(node.args) > 2:  # unflatten(x, dim, sizes)
        dim = node.args[1] % len(in_shape)
        inferred = {dim + j for j, s in enumerate(node.args[2]) if isinstance(s, int) and s == -1}
    return reshape_labels(ctx, node, ctx.L(x), in_shape, out_shape, frozenset(inferred))


def r_permute(ctx, node):
    X = ctx.L(node.args[0])
    dims = [d % len(X) for d in node.args[1]]
    return [X[d] for d in dims]


def r_transpose(ctx, node):
    X = list(ctx.L(node.args[0]))
    if len(node.args) < 3:  # t()
        return X[::-1]
    d0, d1 = node.args[1] % len(X), node.args[2] % len(X)
    X[d0], X[d1] = X[d1], X[d0]
    return X


def r_movedim(ctx, node):
    X = list(ctx.L(node.args[0]))
    n = len(X)
    src, dst = node.args[1], node.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [d % n for d in src], [d % n for d in dst]
    rest = [d for d in range(n) if d not in src]
    order: list = [None] * n
    for s_, d_ in zip(src, dst):
        order[d_] = s_
    it = iter(rest)
    order = [o if o is not None else next(it) for o in order]
    return [X[d] for d in order]


def r_expand(ctx, node):
    X = ctx.L(node.args[0])
    shape = _out_shape(node)
    lead = len(shape) - len(X)
    out = [LabelSpace.none(s) for s in shape[:lead]]
    for d, lab in enumerate(X):
        n = shape[lead + d]
        if len(lab) == n:
            out.append(lab)
        else:
            ctx.ls.block(lab, f"expand in {_where(node)}")
            out.append(LabelSpace.none(n))
    return out


def r_cat(ctx, node):
    tensors = [t for t in node.args[0] if ctx.val(t) is not None and ctx.val(t).numel() > 0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    labs = [ctx.L(t) for t in tensors]
    n = len(labs[0])
    dim %= n
    out = []
    for d in range(n):
        if d == dim:
            out.append(np.concatenate([lab[d] for lab in labs]))
        else:
            for lab in labs[1:]:
                ctx.unify(labs[0][d], lab[d], f"cat in {_where(node)}")
            out.append(labs[0][d])
    return out


def r_slice(ctx, node):  # slice(x, dim, start, end, step)
    X = ctx.L(node.args[0])
    shape = _out_shape(node)
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(X)
    if shape[dim] == len(X[dim]):
        return list(X)
    ctx.ls.block(X[dim], f"slice of channels in {_where(node)}")
    out = list(X)
    out[dim] = LabelSpace.none(shape[dim])
    return out


def r_select(ctx, node):  # select(x, dim, index)
    X = ctx.L(node.args[0])
    dim = node.args[1] % len(X)
    ctx.ls.block(X[dim], f"select of a channel in {_where(node)}")
    return [X[d] for d in range(len(X)) if d != dim]


def r_split(ctx, node):  # split / split_with_sizes / chunk / unbind -> tuple
    X = ctx.L(node.args[0])
    v = node.meta["val"]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if op_name(node) == "unbind":
        dim = node.args[1] if len(node.args) > 1 else 0
    dim %= len(X)
    if len(v) > 1:
        ctx.ls.block(X[dim], f"{op_name(node)} of channels in {_where(node)}")
    outs = []
    for t in v:
        if t.dim() == len(X):
            lab = list(X)
            lab[dim] = X[dim] if t.shape[dim] == len(X[dim]) else LabelSpace.none(t.shape[dim])
        else:
            lab = [X[d] for d in range(len(X)) if d != dim]
        outs.append(lab)
    return outs


def r_matmul(ctx, node):
    a, b = node.args[0], node.args[1]
    A, B = list(ctx.L(a)), list(ctx.L(b))
    why = f"matmul in {_where(node)}"
    a1, b1 = len(A) == 1, len(B) == 1
    if a1:
        A = [LabelSpace.none(1)] + A
    if b1:
        B = B + [LabelSpace.none(1)]
    ctx.unify(A[-1], B[-2], why)
    if ctx.param_of.get(b) is not None:
        ctx.mark(b, len(B) - 1, "producer")
        ctx.mark(b, len(B) - 2, "reader")
    batch = broadcast(ctx, node, [A[:-2], B[:-2]], _out_shape(node)[: max(len(A), len(B)) - 2]) \
        if (len(A) > 2 or len(B) > 2) else []
    out = batch + ([] if a1 else [A[-2]]) + ([] if b1 else [B[-1]])
    return out


def r_addmm(ctx, node):  # addmm(bias, a, b)
    A, B = ctx.L(node.args[1]), ctx.L(node.args[2])
    ctx.unify(A[-1], B[-2], f"addmm in {_where(node)}")
    if ctx.param_of.get(node.args[2]) is not None:
        ctx.mark(node.args[2], 1, "producer")
        ctx.mark(node.args[2], 0, "reader")
    out = [A[0], B[1]]
    return broadcast(ctx, node, [out, ctx.L(node.args[0])], _out_shape(node))


def r_sdpa(ctx, node):  # (q, k, v, attn_mask, dropout, is_causal, scale, enable_gqa)
    q, k, v = node.args[:3]
    Q, K, V = ctx.L(q), ctx.L(k), ctx.L(v)
    why = f"attention in {_where(node)}"
    ctx.unify(Q[-1], K[-1], why)
    ctx.unify(K[-2], V[-2], why)
    for d in range(len(K) - 2):
        ctx.unify(K[d], V[d], why)
    hq, hk = len(Q[-3]), len(K[-3])
    if hq == hk:
        ctx.unify(Q[-3], K[-3], why)
    elif hq % hk == 0:  # grouped-query attention: query head j reads kv head j // (hq // hk)
        ctx.unify(Q[-3], np.repeat(K[-3], hq // hk), why)
    else:
        return r_unknown(ctx, node)
    for d in range(len(Q) - 3):
        ctx.unify(Q[d], K[d], why)
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    out = list(Q[:-1]) + [V[-1]]
    if isinstance(mask, torch.fx.Node) and ctx.L(mask) is not None:
        shape = _out_shape(node)
        broadcast(ctx, node, [out[:-1] + [K[-2]], ctx.L(mask)], tuple(shape[:-1]) + (len(K[-2]),))
    return out


def r_getitem(ctx, node):
    src, i = node.args
    lab = ctx.labels.get(src)
    if lab is None:
        return None
    return lab[i]


def r_stack(ctx, node):
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    labs = [ctx.L(t) for t in tensors]
    for lab in labs[1:]:
        for d in range(len(lab)):
            ctx.unify(labs[0][d], lab[d], f"stack in {_where(node)}")
    out = list(labs[0])
    out.insert(dim % (len(out) + 1), LabelSpace.none(len(tensors)))
    return out


def r_pad(ctx, node):  # constant_pad_nd(x, pad, value)
    X = ctx.L(node.args[0])
    shape = _out_shape(node)
    out = []
    for d, lab in enumerate(X):
        if len(lab) == shape[d]:
            out.append(lab)
        else:
            ctx.ls.block(lab, f"pad of channels in {_where(node)}")
            out.append(LabelSpace.none(shape[d]))
    return out


def r_type_as(ctx, node):
    return list(ctx.L(node.args[0]))


UNARY = """relu relu6 hardtanh gelu silu sigmoid tanh hardswish hardsigmoid leaky_relu elu selu celu mish
softplus dropout feature_dropout alpha_dropout feature_alpha_dropout clone contiguous detach alias _to_copy
to neg abs exp log sqrt rsqrt erf square clamp clamp_min clamp_max reciprocal sign floor ceil round
logical_not bitwise_not lift_fresh_copy gelu_ sin cos log1p expm1 logit threshold prelu
_assert_tensor_metadata""".split()
ELEMENTWISE = """add sub mul div true_divide floor_divide maximum minimum where masked_fill pow eq ne lt gt le ge
logical_and logical_or bitwise_and bitwise_or fmod remainder rsub atan2 addcmul addcdiv lerp""".split()
FRESH = """arange zeros ones full empty zeros_like ones_like full_like empty_like new_zeros new_ones new_full
new_empty scalar_tensor rand randn randint tensor randn_like rand_like""".split()
BLOCK = """index_select gather index scatter index_put triu tril cumsum cumprod flip roll pixel_shuffle
pixel_unshuffle repeat repeat_interleave narrow topk sort argsort argmax argmin einsum unfold""".split()

RULES: dict[str, Callable] = {}
RULES.update({n: r_unary for n in UNARY})
RULES.update({n: r_elementwise for n in ELEMENTWISE})
RULES.update({n: r_fresh for n in FRESH})
RULES.update({n: r_block for n in BLOCK})
RULES.update({
    "conv1d": r_conv, "conv2d": r_conv, "conv3d": r_conv, "convolution": r_convolution,
    "conv_transpose1d": r_conv_transpose, "conv_transpose2d": r_conv_transpose,
    "conv_transpose3d": r_conv_transpose, "linear": r_linear, "embedding": r_embedding,
    "batch_norm": r_batch_norm, "_native_batch_norm_legit_no_training": r_batch_norm,
    "_native_batch_norm_legit": r_batch_norm, "native_batch_norm": r_batch_norm,
    "layer_norm": r_layer_norm, "native_layer_norm": r_layer_norm, "rms_norm": r_layer_norm,
    "group_norm": r_group_norm,
    "mean": r_reduce, "sum": r_reduce, "amax": r_reduce, "amin": r_reduce, "var": r_reduce, "std": r_reduce,
    "prod": r_reduce, "logsumexp": r_reduce, "all": r_reduce, "any": r_reduce,
    "softmax": r_softmax, "_softmax": r_softmax, "log_softmax": r_softmax, "_log_softmax": r_softmax,
    "max_pool1d": lambda c, n: r_pool(c, n, 1), "avg_pool1d": lambda c, n: r_pool(c, n, 1),
    "adaptive_avg_pool1d": lambda c, n: r_pool(c, n, 1),
    "max_pool2d": lambda c, n: r_pool(c, n, 2), "avg_pool2d": lambda c, n: r_pool(c, n, 2),
    "adaptive_avg_pool2d": lambda c, n: r_pool(c, n, 2), "adaptive_max_pool2d": lambda c, n: r_pool(c, n, 2),
    "max_pool2d_with_indices": lambda c, n: r_pool(c, n, 2), "_adaptive_avg_pool2d": lambda c, n: r_pool(c, n, 2),
    "upsample_nearest2d": lambda c, n: r_pool(c, n, 2), "upsample_bilinear2d": lambda c, n: r_pool(c, n, 2),
    "max_pool3d": lambda c, n: r_pool(c, n, 3), "avg_pool3d": lambda c, n: r_pool(c, n, 3),
    "adaptive_avg_pool3d": lambda c, n: r_pool(c, n, 3),
    "view": r_reshape, "reshape": r_reshape, "_unsafe_view": r_reshape, "flatten": r_reshape,
    "unflatten": r_reshape, "squeeze": r_reshape, "unsqueeze": r_reshape, "view_as": r_reshape,
    "reshape_as": r_reshape,
    "permute": r_permute, "transpose": r_transpose, "t": r_transpose, "numpy_T": r_transpose,
    "swapaxes": r_transpose, "swapdims": r_transpose, "movedim": r_movedim, "moveaxis": r_movedim,
    "expand": r_expand, "expand_as": r_expand, "cat": r_cat, "concat": r_cat, "stack": r_stack,
    "slice": r_slice, "select": r_select, "split": r_split, "split_with_sizes": r_split,
    "chunk": r_split, "unbind": r_split, "tensor_split": r_split,
    "matmul": r_matmul, "mm": r_matmul, "bmm": r_matmul, "addmm": r_addmm,
    "scaled_dot_product_attention": r_sdpa, "getitem": r_getitem,
    "native_dropout": r_tuple_unary, "constant_pad_nd": r_pad, "pad": r_pad, "type_as": r_type_as,
})
