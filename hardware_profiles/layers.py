"""Costed layers of a model: one frozen LayerSig per kernel the runtime runs, found by torch.export.

Fusions follow what onnxruntime's CPU graph optimiser does with the exported ONNX: a convolution
absorbs its BatchNorm, its activation (relu / relu6 / clip / sigmoid) and a residual add that
consumes it (plus the activation after the add): one kernel. Reshapes, views, dropout and other
copies that the runtime elides are not costed. Everything else becomes a memory-bound layer
(element-wise, pooling, reductions, softmax, norms, concat) whose cost scales with its elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# layer ops
CONV, DWCONV, LINEAR, MATMUL = "conv", "dwconv", "linear", "matmul"
COMPUTE_OPS = (CONV, DWCONV, LINEAR, MATMUL)
# memory-bound kinds (LayerSig.op == "memory", LayerSig.kind one of these)
MEMORY = "memory"
MEMORY_KINDS = ("unary", "hardswish", "silu", "gelu", "binary", "broadcast", "maxpool", "avgpool", "gap", "softmax",
                "norm", "concat", "reorder")
# a kind that a profile measured before it existed is priced as this one (and fingerprinted as it: predictor.structure)
KIND_FALLBACK = {"hardswish": "unary"}

_FUSABLE_ACT = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_min", "sigmoid", "sigmoid_"}
_BN = {"_native_batch_norm_legit_no_training", "batch_norm", "_native_batch_norm_legit",
       "native_batch_norm", "cudnn_batch_norm"}
_FREE = {"view", "reshape", "flatten", "_unsafe_view", "getitem", "dropout", "dropout_", "clone", "contiguous",
         "alias", "detach", "squeeze", "unsqueeze", "expand", "size", "sym_size", "t", "transpose", "permute",
         "identity", "lift_fresh_copy", "_assert_tensor_metadata", "to", "_to_copy", "slice", "select",
         "feature_dropout", "alpha_dropout", "zeros", "ones", "arange", "full", "scalar_tensor", "type_as",
         "split", "split_with_sizes", "chunk", "unbind", "stack", "embedding"}
_MEMORY_OF = {
    "relu": "unary", "relu_": "unary", "hardtanh": "unary", "hardtanh_": "unary", "clamp": "unary",
    "clamp_min": "unary", "sigmoid": "unary", "sigmoid_": "unary", "tanh": "unary", "hardswish": "hardswish",
    "hardswish_": "hardswish", "hardsigmoid": "unary", "neg": "unary", "exp": "unary", "sqrt": "unary",
    "rsqrt": "unary", "pow": "unary", "erf": "unary",
    "silu": "silu", "silu_": "silu", "gelu": "gelu",
    "add": "binary", "add_": "binary", "mul": "binary", "mul_": "binary", "sub": "binary", "div": "binary",
    "max_pool2d": "maxpool", "max_pool2d_with_indices": "maxpool", "avg_pool2d": "avgpool",
    "adaptive_avg_pool2d": "gap", "mean": "gap", "sum": "gap",
    "softmax": "softmax", "_softmax": "softmax", "layer_norm": "norm", "native_layer_norm": "norm",
    "group_norm": "norm", "native_group_norm": "norm", "cat": "concat", "concat": "concat",
}


@dataclass(frozen=True)
class LayerSig:
    """One costed kernel. Channels: conv/dwconv cin/cout; linear in/out features; matmul K/N
    (rows = tokens, `groups` = batched heads); memory ops: cin = channels (cout = cin), elements
    per sample = cin * h * w * tokens. h/w: input spatial size (1 for non-spatial)."""
    op: str
    cin: int
    cout: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    h: int = 1
    w: int = 1
    tokens: int = 1
    kind: str = ""                 # memory ops: one of MEMORY_KINDS
    module: str = ""
    fusion: str = ""               # e.g. "conv+bn+relu", "conv+bn+add+relu"
    fixed_in: bool = False         # cin is the model input's channels (not prunable)
    fixed_out: bool = False        # cout reaches the model output (not prunable)
    node: str = field(default="", compare=False)   # the torch.export node it came from (for the planner)
    dilation: tuple[int, int] = (1, 1)             # convolutions: the kernel's taps are this far apart
    transposed: bool = False                       # a transposed convolution (decoders, upsamplers)

    @property
    def out_hw(self) -> tuple[int, int]:
        kh, kw = ((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))   # the span the kernel covers
        if self.transposed:     # each input pixel scatters a kernel-sized patch, `stride` apart (output_padding aside)
            return ((self.h - 1) * self.stride[0] - 2 * self.padding[0] + kh,
                    (self.w - 1) * self.stride[1] - 2 * self.padding[1] + kw)
        return ((self.h + 2 * self.padding[0] - kh) // self.stride[0] + 1,
                (self.w + 2 * self.padding[1] - kw) // self.stride[1] + 1)

    def conv_groups(self, cin: int, cout: int) -> int:
        """The Conv `group` of this layer at (cin, cout) channels: depthwise: one group per channel;
        grouped: its own groups (pruning a grouped conv keeps its groups, each group narrower)."""
        g = cout if self.op == DWCONV else max(int(self.groups), 1)
        if cin % g or cout % g:
            raise ValueError(f"{self.op} k{self.kernel[0]}x{self.kernel[1]} g{self.groups}: ({cin}, {cout}) channels "
                             f"do not split into {g} groups")
        return g

    @property
    def conv_variant(self) -> str:
        """What sets a convolution apart beyond kernel, stride, padding and groups ("" for a plain one): its dilation
        and whether it is transposed; part of its table key and of the network's fingerprint."""
        return ((f" d{self.dilation[0]}x{self.dilation[1]}" if self.dilation != (1, 1) else "")
                + (" transposed" if self.transposed else ""))

    def weight_shape(self, cin: int, cout: int) -> tuple[int, ...]:
        """The conv weight at (cin, cout) channels: (cout, cin / groups, kh, kw); transposed (cin, cout / groups, ...)."""
        g = self.conv_groups(cin, cout)
        return (cin, cout // g) + self.kernel if self.transposed else (cout, cin // g) + self.kernel

    def torch_conv(self, x, w, b):
        """This conv in torch on input `x`, weight `w` (`weight_shape`), bias `b` (for the torch profilers)."""
        import torch.nn.functional as F

        g = self.conv_groups(x.shape[1], b.shape[0])
        if self.transposed:
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, 0, g, self.dilation)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, g)

    def macs(self) -> int:
        """Multiply-accumulates per sample."""
        if self.op in (CONV, DWCONV):
            oh, ow = (self.h, self.w) if self.transposed else self.out_hw   # transposed: a kernel per input pixel
            return oh * ow * self.cout * (self.cin // max(self.groups, 1)) * self.kernel[0] * self.kernel[1]
        if self.op == LINEAR:
            return self.tokens * self.cin * self.cout
        if self.op == MATMUL:
            return self.groups * self.tokens * self.cin * self.cout
        return 0

    def elements(self) -> int:
        """Memory ops: elements read per sample (the largest input)."""
        return self.cin * self.h * self.w * self.tokens

    def bytes(self, dtype_bytes: int = 4) -> int:
        """Bytes moved per sample (inputs, outputs, weights; weights once)."""
        if self.op in (CONV, DWCONV):
            oh, ow = self.out_hw
            wts = self.cout * (self.cin // max(self.groups, 1)) * self.kernel[0] * self.kernel[1]
            return dtype_bytes * (self.cin * self.h * self.w + self.cout * oh * ow + wts)
        if self.op == LINEAR:
            return dtype_bytes * (self.tokens * (self.cin + self.cout) + self.cin * self.cout)
        if self.op == MATMUL:
            return dtype_bytes * self.groups * (self.tokens * (self.cin + self.cout) + self.cin * self.cout)
        return dtype_bytes * 2 * self.elements()


def _name(node) -> str:
    t = node.target
    n = getattr(t, "__name__", str(t))
    return n.split(".")[0]


def _module(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def _shape(node) -> tuple[int, ...] | None:
    import torch

    v = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(v, (tuple, list)):
        v = v[0] if v and isinstance(v[0], torch.Tensor) else None
    if isinstance(v, torch.Tensor):
        try:
            return tuple(int(s) for s in v.shape)
        except TypeError:
            return None
    return None


def _pair(x, default) -> tuple[int, int]:
    if x is None:
        return default
    if isinstance(x, int):
        return (x, x)
    x = list(x)
    return (int(x[0]), int(x[-1])) if x else default


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _users(node) -> list:
    return [u for u in node.users if u.op == "call_function"]


def _follow_single(node, names: set) -> object | None:
    """The only user of `node` if it is one of `names` (getitem 0 after a batch norm is skipped)."""
    us = _users(node)
    if len(us) != 1:
        return None
    u = us[0]
    if _name(u) in names:
        if _name(u) in _BN and not isinstance(u.meta.get("val"), (tuple, list)):
            return u
        if _name(u) in _BN:
            gs = [g for g in _users(u) if _name(g) == "getitem" and g.args[1] == 0]
            return gs[0] if gs else None
        return u
    return None


def _spatial(shape) -> tuple[int, int, int, int]:
    """(channels, h, w, tokens) per sample of an activation shape (batch first)."""
    if shape is None or len(shape) == 0:
        return 1, 1, 1, 1
    s = shape[1:]
    if len(s) == 3:
        return s[0], s[1], s[2], 1
    if len(s) == 2:            # (tokens, features)
        return s[1], 1, 1, s[0]
    if len(s) == 1:
        return s[0], 1, 1, 1
    if not s:                  # (batch,) only: e.g. a per-sample scalar
        return 1, 1, 1, 1
    n = 1
    for d in s[1:-1]:
        n *= d
    return s[-1], 1, 1, n * s[0]


# ops that read only a tensor's shape, dtype or device: a new tensor of a given size (swin's attention mask:
# x.new_zeros((H, W))) does not carry the batch
_SHAPE_ONLY = {"new_zeros", "new_ones", "new_empty", "new_full", "sym_size", "size"}


def _folded(graph, node, shape) -> tuple[int, int, int, int]:
    """`_spatial`, with the tokens holding whatever the batch dim folds in beyond the batch (a window attention's
    windows: (B * windows, heads, L, L)), so a sample's elements are the tensor's over the batch."""
    c, h, w, t = _spatial(shape)
    per = graph.per_sample(node, shape, 0)
    if per is not None and per != c * h * w * t and per % (c * h * w) == 0:
        t = per // (c * h * w)
    return c, h, w, t


class _Graph:
    """The model's inputs and outputs in a torch.export graph, and the two questions the pruner asks of a
    layer: is its input the model's input, does its output reach the model's output (free ops pass both
    through). Also the batch it was traced at and which nodes carry the batch (computed from a model input),
    for `per_sample`."""

    def __init__(self, ep) -> None:
        import torch

        g = ep.graph
        placeholders = {n.name: n for n in g.nodes if n.op == "placeholder"}
        users = [n for n in ep.graph_signature.user_inputs if n in placeholders]
        self.inputs = {placeholders[n] for n in set(users)}
        out_node = next(n for n in g.nodes if n.op == "output")
        self.outputs = set(a for a in torch.utils._pytree.tree_leaves(out_node.args) if hasattr(a, "op"))
        first = _shape(placeholders[users[0]]) if users else None
        self.batch = first[0] if first else 1
        self.batched = set(self.inputs)
        for n in g.nodes:
            if n.op == "call_function" and _name(n) not in _SHAPE_ONLY and any(a in self.batched for a in n.all_input_nodes):
                self.batched.add(n)

    def per_sample(self, node, shape, inner: int) -> int | None:
        """How many rows of `inner` trailing dims one sample owns in `shape`, the shape of `node` (an activation
        computed from a model input): its leading dims' product over the traced batch. The batch is not always
        dim 0 alone: a window attention folds windows into it ((B * windows, heads, L, d)), torch's
        multi-head attention runs (L, B, E) and (B * heads, L, d). None: not computed from an input, or the
        product does not split into the batch (the caller keeps dim 0 as the batch)."""
        if node not in self.batched or len(shape) <= inner:
            return None
        rows = _numel(shape[:len(shape) - inner])
        return rows // self.batch if rows % self.batch == 0 and rows >= self.batch else None

    def src_is_input(self, n, depth: int = 0) -> bool:
        if n in self.inputs:
            return True
        if depth > 8 or not hasattr(n, "op") or n.op != "call_function" or _name(n) not in _FREE | _MEMORY_OF.keys():
            return False
        first = n.args[0] if n.args else None
        return hasattr(first, "op") and self.src_is_input(first, depth + 1)

    def reaches_output(self, n, depth: int = 0) -> bool:
        if n in self.outputs:
            return True
        if depth > 8:
            return False
        us = _users(n)
        return bool(us) and all(_name(u) in _FREE for u in us) and any(self.reaches_output(u, depth + 1) for u in us)


_CONV_OPS = ("conv2d", "convolution", "conv1d", "_convolution", "conv3d", "conv_transpose1d", "conv_transpose2d",
             "conv_transpose3d")   # 3-D ones: refused by _conv_layers (no cost model)
_LINEAR_OPS = ("linear", "addmm")
_MATMUL_OPS = ("matmul", "bmm", "mm", "scaled_dot_product_attention")
_CONCAT_OPS = ("cat", "concat")
_ACT_SUFFIX = {"hardtanh": "relu6", "hardtanh_": "relu6", "relu_": "relu", "clamp": "clip", "clamp_min": "relu",
               "sigmoid_": "sigmoid"}


def _conv_fusion(node, absorbed: set) -> tuple[list[str], object]:
    """(the fused kernel's parts, its last node): a convolution absorbs its batch norm, a residual add that
    consumes it, and an activation after either."""
    fusion, end = ["conv"], node
    nxt = _follow_single(end, _BN)
    if nxt is not None:
        fusion.append("bn")
        absorbed.update([_users(end)[0], nxt])  # the batch norm (and its getitem)
        end = nxt
    nxt = _follow_single(end, {"add", "add_"})
    if nxt is not None and nxt not in absorbed and _shape(nxt) == _shape(end):
        fusion.append("add")
        absorbed.add(nxt)
        end = nxt
    nxt = _follow_single(end, _FUSABLE_ACT)
    if nxt is not None:
        fusion.append(_ACT_SUFFIX.get(_name(nxt), _name(nxt)))
        absorbed.add(nxt)
        end = nxt
    return fusion, end


def _is_transposed(node, name: str) -> bool:
    return "transpose" in name or (name in ("convolution", "_convolution") and bool(_arg(node, 6, "transposed", False)))


def _conv_layers(node, name: str, graph: _Graph, absorbed: set) -> list[LayerSig]:
    x, wt = node.args[0], node.args[1]
    xs, ws = _shape(x), _shape(wt)
    if ws is not None and len(ws) > 4:      # over more than two spatial dims (video models' 3-D convolutions)
        from compress.errors import CompressError

        raise CompressError(f"the latency model has no cost for a {len(ws) - 2}-D convolution "
                            f"({_module(node) or node.name}); it prices "
                            "1-D and 2-D convolutions (transposed too), linear layers, matmuls, attention and "
                            "memory-bound ops, so this model's latency cannot be predicted or planned for (compress "
                            "prune --ratio R prunes it without a latency model)")
    if xs is None or ws is None:
        return []
    transposed = _is_transposed(node, name)
    if name in ("conv_transpose1d", "conv_transpose2d"):
        # (input, weight, bias, stride, padding, output_padding, groups, dilation); weight (cin, cout / groups, k...)
        groups, dilation = _arg(node, 6, "groups", 1), _arg(node, 7, "dilation", 1)
    else:
        groups = _arg(node, 6 if name in ("conv2d", "conv1d") else 8, "groups", 1)
        dilation = _arg(node, 5, "dilation", 1)
    stride, pad = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
    dilation = _pair(dilation, (1, 1))
    if isinstance(pad, str):
        pad = [(k - 1) * d // 2 for k, d in zip(ws[2:], dilation)] if pad == "same" else [0] * len(ws[2:])
    groups = int(groups)
    cin, cout = xs[1], (ws[1] * groups if transposed else ws[0])
    h, w = (xs[2], xs[3]) if len(xs) == 4 else (xs[2], 1)
    k = (ws[2], ws[3]) if len(ws) == 4 else (ws[2], 1)
    fusion, end = _conv_fusion(node, absorbed)
    op = DWCONV if not transposed and groups > 1 and groups == cin and ws[1] == 1 else CONV
    if len(ws) == 3:            # conv1d: (N, C, L) on a (L, 1) map
        dilation = (dilation[0], 1)
    return [LayerSig(op, cin, cout, k, _pair(stride, (1, 1)), _pair(pad, (0, 0)), groups, h, w,
                     module=_module(node), fusion="+".join(fusion),
                     fixed_in=graph.src_is_input(x), fixed_out=graph.reaches_output(end), dilation=dilation,
                     transposed=transposed)]


def _linear_layers(node, name: str, graph: _Graph, absorbed: set) -> list[LayerSig]:
    x, wt = (node.args[0], node.args[1]) if name == "linear" else (node.args[1], node.args[2])
    xs, ws = _shape(x), _shape(wt)
    if xs is None or ws is None:
        return []
    fin, fout = (ws[1], ws[0]) if name == "linear" else (ws[0], ws[1])
    tokens = graph.per_sample(x, xs, 1) or _numel(xs[1:-1])
    fusion, end = ["linear"], node
    nxt = _follow_single(end, {"relu", "relu_", "gelu"})
    if nxt is not None and _name(nxt) in ("relu", "relu_"):
        fusion.append("relu")
        absorbed.add(nxt)
        end = nxt
    return [LayerSig(LINEAR, fin, fout, tokens=tokens, module=_module(node), fusion="+".join(fusion),
                     fixed_in=graph.src_is_input(x), fixed_out=graph.reaches_output(end))]


def _matmul_layers(node, name: str, graph: _Graph) -> list[LayerSig]:
    a, b = node.args[0], node.args[1]
    as_, bs = _shape(a), _shape(b)
    if as_ is None or bs is None:
        return []
    rows = graph.per_sample(a, as_, 1) if len(as_) >= 2 else None
    if len(as_) == 2 and rows:            # (B * L, K) @ (K, N): one matrix of L rows per sample
        return [LayerSig(MATMUL, as_[-1], bs[-1], tokens=rows, module=_module(node), fusion="matmul")]
    heads = max(rows // as_[-2], 1) if rows and rows % as_[-2] == 0 else _numel(as_[1:-2])
    mod = _module(node)
    if name == "scaled_dot_product_attention":
        # q @ k^T then attn @ v: two matmuls and a softmax over (heads, L, S)
        L, E, S = as_[-2], as_[-1], bs[-2]
        return [LayerSig(MATMUL, E, S, groups=heads, tokens=L, module=mod, fusion="attention.qk"),
                LayerSig(MEMORY, S, S, tokens=L * heads, kind="softmax", module=mod, fusion="attention.softmax"),
                LayerSig(MATMUL, S, E, groups=heads, tokens=L, module=mod, fusion="attention.av")]
    return [LayerSig(MATMUL, as_[-1], bs[-1], groups=heads, tokens=as_[-2] if len(as_) >= 2 else 1,
                     module=mod, fusion="matmul")]


def _concat_layers(node, name: str, graph: _Graph) -> list[LayerSig]:
    parts = [_shape(a) for a in node.args[0] if hasattr(a, "op")] if node.args else []
    parts = [s for s in parts if s is not None]
    if not parts:
        return []
    c, h, w, t = _folded(graph, node, _shape(node) or parts[0])
    return [LayerSig(MEMORY, c, c, h=h, w=w, tokens=t, kind="concat", module=_module(node), fusion=name)]


def _broadcasts(a, b) -> bool:
    """Whether an element-wise op of operands shaped `a` and `b` broadcasts one over the other within a sample:
    right-aligned, they differ in a dim other than the batch (dim 0 of the longer). A batch-1 operand added to a
    batch-B one (a position embedding, a learned token) is a plain binary op at every batch, so a network traced at
    batch 2 (the planner) fingerprints as it does at batch 1 (the profile's calibration)."""
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    return any(x != y for x, y in zip(a[1:] if n >= 2 else a, b[1:] if n >= 2 else b))


def _memory_layers(node, name: str, graph: _Graph) -> list[LayerSig]:
    kind = _MEMORY_OF[name]
    shapes = [s for s in (_shape(a) for a in node.args if hasattr(a, "op")) if s is not None]
    if not shapes:
        return []  # scalar arithmetic
    big = max(shapes, key=lambda s: _numel(s))
    if kind == "binary" and len(shapes) == 2 and _broadcasts(*shapes):
        kind = "broadcast"
    if kind == "binary" and len(shapes) == 1:
        kind = "unary"   # x * constant
    c, h, w, t = _folded(graph, node, big)
    if kind == "gap" and len(big) < 3:
        kind = "unary"
    return [LayerSig(MEMORY, c, c, h=h, w=w, tokens=t, kind=kind, module=_module(node), fusion=name,
                     fixed_in=graph.src_is_input(node))]


def _layers_of(node, graph: _Graph, absorbed: set) -> list[LayerSig]:
    """The costed layers of one graph node (none for free ops); fused successors join `absorbed`."""
    name = _name(node)
    if name in _CONV_OPS:
        return _conv_layers(node, name, graph, absorbed)
    if name in _LINEAR_OPS:
        return _linear_layers(node, name, graph, absorbed)
    if name in _MATMUL_OPS:
        return _matmul_layers(node, name, graph)
    if name in _CONCAT_OPS:
        return _concat_layers(node, name, graph)
    if name in _MEMORY_OF:
        return _memory_layers(node, name, graph)
    return []


def extract_layers(model, example_inputs, ep=None) -> list:
    """One LayerSig per costed op of `model` run on `example_inputs`, in graph order, each tagged with the
    name of the torch.export node it came from."""
    from compress.graph.trace import export_model

    if ep is None:
        ep = export_model(model, tuple(example_inputs))
    graph = _Graph(ep)
    absorbed: set = set()      # nodes fused into an earlier layer's kernel
    layers: list[LayerSig] = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node not in absorbed:
            layers += [replace(s, node=node.name) for s in _layers_of(node, graph, absorbed)]
    return layers


def _numel(s) -> int:
    n = 1
    for d in s:
        n *= d
    return n
