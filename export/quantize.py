"""`compress export --dtype int8`: post-training static quantization to the standard ONNX QDQ form.

    model.onnx --quant_pre_process (shape inference, ORT basic optimisation)--> preprocessed graph
      --quantize_static (QDQ, per-channel symmetric int8 weights, 8-bit activations (uint8 on the CPU),
                         calibrated on --calib by MinMax | Percentile | Entropy)--> model.int8.onnx

onnxruntime's own tooling (`onnxruntime.quantization`) does the work; this module feeds it the calibration
data (`--calib`: `random:N`, a `.npy` of inputs, or `data:N`, a stratified subset of the training split of
the dataset the model was trained on, e.g. Fashion-MNIST for `compress:` models; text models also `tweets:N` or
`FILE.csv:N`, sentences tokenised with their real padding), chooses the calibration method and judges the result
against the fp32 model by task metric, not elementwise. A model with several inputs (token ids with an
attention mask / token type ids) is calibrated and judged with every input fed: masks as the calibration data
gives them (a .npy of token ids: 0 on the pad token id; text: the tokenizer's), token type ids zeros; judged on
inputs with padding.

- classifiers ((N, K) logits): top-1 agreement with fp32 >= AGREEMENT_MIN (0.95), plus the int8 and fp32
  top-1 accuracy where a labelled dataset is known; a flip between classes whose fp32 margin is within
  TIE_ERRORS times the sample's median int8 logit error (a near-tie) counts as agreeing while the logit cosine is
  >= COSINE_MIN;
- everything else (encoders, embeddings, dense maps): mean cosine similarity per sample >= COSINE_MIN
  (0.98; for (N, T, H) hidden states, of the token-mean embedding, over the real tokens where a mask is fed).

Why these bars: int8 PTQ of a CNN typically changes well under 1% of top-1 decisions on real inputs (the
bench's bar is 0.5 point of accuracy); 0.95 agreement flags a broken quantization (a bad calibration set,
an activation range blown up by outliers) without failing honest models on the handful of near-tie inputs
of a small check set. 0.98 cosine is the sentence-embedding bar of bench/int8.py: retrieval rankings are
essentially unchanged above it.

The default calibration method is chosen by measured accuracy when the model's accuracy can be judged (a
labelled dataset is known: `compress:` models and pruned directories of them): each method quantizes the
model, once as is and once after bias correction (bias_correct: each Conv/Gemm bias absorbs the mean output
shift its int8 weight rounding causes, measured on the calibration data), and the most accurate on a held-out
slice of the training split wins (ties: the higher top-1 agreement with fp32, then without bias correction,
then MinMax, Percentile, Entropy). Otherwise MinMax (the method whose ranges cover every calibration activation; the
histogram methods clip, which only pays off when it can be checked). The manifest says which and why.

`--target gpu|jetson`: the same QDQ file feeds TensorRT's explicit quantization; TensorRT takes symmetric
activations only (zero point 0), so activations are quantized symmetric there and biases stay fp32.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from compress.errors import CompressError, first_line
from compress.export.build_trt import INT8_ONNX
from compress.export.targets import CALIB_METHODS as METHODS  # minmax, percentile, entropy

INT8_FILE = INT8_ONNX  # model.int8.onnx, the name build_engine.sh and build_trt.py read
METHOD_NAMES = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
AGREEMENT_MIN = 0.95
COSINE_MIN = 0.98
SELECT_SAMPLES = 2000      # held-out training-split samples the method choice is measured on (1000: too noisy)
CHECK_SAMPLES = 1000       # test-split samples the int8 model is judged on (classifiers with a known dataset)
RANDOM_CHECK = 64          # random inputs the int8 model is judged on otherwise (besides the parity cases)
TIE_ERRORS = 4             # a flipped top-1 whose fp32 margin is under this many of the sample's median |int8 - fp32|
                           # logit errors: a tie the int8 rounding noise explains (not an outlier error)
PERCENTILE = 99.999
TEXT_OPS = ("MatMul", "Gemm")  # transformers: quantize the matrix products only (LayerNorm/Softmax stay fp32)
GELU_OPS = ("Erf", "Gelu", "FastGelu", "BiasGelu")  # a GELU, fused or as its erf subgraph
GELU_HOPS = 8              # how far above a MatMul's activation input a GELU is looked for (not past another
                           # MatMul/Gemm: a fixed batch puts reshapes between the GELU and the FFN down-projection)
BIAS_CORRECTION_NOTE = {"what": "b -= dW E[x] per output channel of every Conv/Gemm (dW: the int8 rounding error of "
                        "its weights, E[x]: its input's mean on the calibration data), Nagel et al. 2019",
                        "why": "weight rounding, not activation ranges, is what cost "
                        "compress:efficientnet-lite0-fmnist its int8 accuracy (bench/int8.py, docs/export.md)"}


def parse_method(name: str | None) -> str | None:
    """--calib-method: minmax | percentile | entropy (case-insensitive), None when not given."""
    if name is None:
        return None
    m = name.strip().lower()
    if m not in METHODS:
        raise CompressError(f"unknown --calib-method {name!r}; choose one of {', '.join(METHODS)}")
    return m


def dataset_of(model, spec: str) -> str | None:
    """The labelled dataset the model was trained on (compress: models and pruned directories of them)."""
    d = getattr(model, "compress_dataset", None)
    if d:
        return d
    if spec.startswith("compress:"):
        from compress.models import zoo

        try:
            return zoo._entry(spec.split(":", 1)[1]).get("data")
        except Exception:
            return None
    return None


@dataclass
class Calibration:
    spec: str
    kind: str                  # random | npy | data | text
    arrays: list               # feeds: numpy batches of the model's input, or dicts input name -> batch (several)
    description: str
    warning: str | None = None
    masks: str | None = None   # a model with an attention mask: which masks the calibration fed


def rows(feed) -> int:
    """The batch size of a feed (an array, or a dict of arrays sharing a batch)."""
    return len(next(iter(feed.values())) if isinstance(feed, dict) else feed)


def calibration(spec: str, lm, example: tuple, dataset: str | None, batch: int | None, seed: int = 0) -> Calibration:
    """The calibration batches of --calib `spec` (compress.calib's specs; data[:N] from `dataset`'s training
    split; tweets[:N] / FILE.csv[:N] tokenised for a text model), one array per batch, or one dict of every
    input for a model with several. A static `batch` re-chunks them to that batch (an incomplete last chunk is
    dropped)."""
    import torch

    from compress import calib
    from compress.export import inputs as inp

    c = calib.parse(spec, data=True, text=lm.input_dtype == "int64")
    if c.kind == "data":
        if dataset is None:
            raise CompressError(f"--calib {spec}: no training data is known for {lm.spec}; use a .npy file of real "
                                "inputs" + (", tweets[:N] or FILE.csv[:N]" if lm.input_dtype == "int64" else "")
                                + " (or random:N)")
        from compress.accuracy import data

        ds = data.load(dataset, "train", tuple(example[0].shape[1:]))
        data.check_shape(ds, tuple(example[0].shape[1:]))
        cols = (data.calibration_subset(ds, c.samples, seed).images,)
        desc = f"{len(cols[0])} samples of {dataset} (training split, stratified, seed {seed}; --calib {spec})"
    elif c.kind == "text":
        from compress.accuracy import text

        texts = text.stratified(text.load(c.path, "train"), c.samples, seed).texts
        seq = int(example[0].shape[1])
        cols = inp.tokenised(text.tokenizer(lm.spec), texts, inp.names(lm), seq)
        desc = (f"{len(texts)} sentences of {c.path} (training split, stratified, seed {seed}; tokenised, "
                f"padded/truncated to {seq} tokens; --calib {spec})")
    else:
        batches = calib.input_batches(spec, lm, example)
        if not batches:
            raise CompressError(f"--calib {spec}: no samples")
        cols = tuple(torch.cat(col) for col in zip(*batches))
        desc = (f"{len(cols[0])} random inputs (seed 1; --calib {spec})" if c.kind == "random"
                else f"{len(cols[0])} inputs of {spec}")
    n, names = len(cols[0]), inp.names(lm)
    if n == 0:
        raise CompressError(f"--calib {spec}: no samples")
    arrs = [t.numpy() for t in cols]
    step = batch or calib.BATCH
    arrays = [arrs[0][i:i + step] if len(arrs) == 1 else {k: a[i:i + step] for k, a in zip(names, arrs)}
              for i in range(0, n, step) if not batch or i + batch <= n]
    if not arrays:
        raise CompressError(f"--calib {spec}: {n} samples, fewer than the static batch {batch}")
    masks, padded = _masks(c.kind, lm, names, cols)
    warning = None
    if c.kind == "random" and dataset is not None:
        warning = (f"calibrated on random inputs although {lm.spec}'s training data ({dataset}) is known: activation "
                   f"ranges do not match real inputs; use --calib data:{calib.DATA_SAMPLES}")
    elif c.kind == "random":
        warning = ("calibrated on random inputs: activation ranges come from noise, not real inputs; the int8 "
                   "model's accuracy is not representative (pass --calib FILE.npy of real inputs)")
    if masks and not padded:
        warning = "; ".join(filter(None, [warning, (
            "calibrated on sequences without padding (attention masks of ones): the activation ranges of padded "
            "inputs are not calibrated (int8.parity judges padded inputs); pass --calib FILE.npy of token ids "
            "with padding, or --calib tweets[:N] / FILE.csv[:N]")]))
    return Calibration(spec, c.kind, arrays, desc, warning, masks)


def _masks(kind: str, lm, names: list[str], cols: tuple) -> tuple[str | None, int]:
    """(what the calibration's attention masks and token type ids are, how many sequences are padded); (None, 0)
    for a model without an attention mask."""
    from compress.export import inputs as inp

    kinds = [inp.value_kind(n, t) for n, t in zip(names, cols)]
    if len(cols) < 2 or "mask" not in kinds:
        return None, 0
    pad = (lm.hf_config or {}).get("pad_token_id")
    source = {"text": "the tokenizer's (0 on the padding)", "random": "ones (random inputs: no padding)",
              "npy": (f"0 where the token id is the config's pad token id {pad}, 1 elsewhere" if pad is not None
                      else "ones (the model's config names no pad token id)")}[kind]
    mask = cols[kinds.index("mask")]
    padded = int((mask == 0).any(1).sum())
    zeros = [n for n, k in zip(names, kinds) if k == "zeros"]
    return (f"{', '.join(n for n, k in zip(names, kinds) if k == 'mask')}: {source}; {padded} of {len(mask)} "
            "sequences padded" + (f"; {', '.join(zeros)}: zeros" if zeros else "")), padded


def calibration_reader(input_name: str, arrays: list):
    """onnxruntime's CalibrationDataReader over `arrays` (one feed of `input_name` each; an item that is a dict
    is a whole feed, for graphs with several inputs), rewindable."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(arrays)

        def get_next(self):
            a = next(self._it, None)
            return None if a is None else a if isinstance(a, dict) else {input_name: a}

        def rewind(self):
            self._it = iter(arrays)

    return Reader()


def preprocess(src: str, dst: str) -> dict:
    """onnxruntime's quant_pre_process (symbolic shape inference, ORT basic optimisation, ONNX shape
    inference); falls back to ONNX shape inference alone, then to the model as is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compress.export.onnx import quietly

    tries = [("symbolic + ONNX shape inference, onnxruntime basic optimisation", {}),
             ("ONNX shape inference, onnxruntime basic optimisation (symbolic shape inference failed)",
              {"skip_symbolic_shape": True})]
    errors = []
    for what, kw in tries:
        try:
            quietly(quant_pre_process, src, dst, **kw)
            return {"quant_pre_process": what}
        except Exception as e:
            errors.append(first_line(e, 150))
    shutil.copy(src, dst)
    return {"quant_pre_process": f"skipped: {'; '.join(errors)}"}


def quantize(src: str, dst: str, arrays: list, method: str, symmetric_activations: bool,
             text: bool) -> dict:
    """quantize_static(src) -> dst in QDQ form; returns the settings used. `arrays`: batches of the first input,
    or whole feeds (dicts: input name -> array; the profiler's one-op graphs with one input per timed op)."""
    import onnx

    name = onnx.load(src, load_external_data=False).graph.input[0].name
    extra = {"WeightSymmetric": True, "ActivationSymmetric": symmetric_activations,
             "CalibTensorRangeSymmetric": symmetric_activations}
    if symmetric_activations:
        extra["QuantizeBias"] = False          # TensorRT: biases stay fp32, fused into the int8 kernels
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    ops = list(TEXT_OPS) if text else None
    keep = gelu_fed_matmuls(src) if text else []
    _quantize_in(src, dst, name, arrays, ops, method, extra, keep, unsigned=not symmetric_activations)
    info = {"format": "QDQ", "weights": "int8, per-channel, symmetric", "activations":
            "int8, per-tensor, symmetric (TensorRT)" if symmetric_activations else
            "uint8, per-tensor, asymmetric (U8S8: onnxruntime's CPU fuses every QDQ conv/gemm into its int8 kernels)",
            "op_types": ops or "onnxruntime's default (every op with a QDQ rule)",
            "bias": "fp32 (not quantized)" if symmetric_activations else "int32",
            "calibration_method": METHOD_NAMES[method]}
    if text:
        info["kept_fp32"] = {"nodes": keep, "why": "the FFN down-projections (input: the GELU output) of a transformer: "
                             "per-tensor int8 of their outlier activations cost hf:minilm's embedding cosine 0.92 "
                             "instead of 0.99 (bench/int8.py)"}
    if method == "percentile":
        info["percentile"] = PERCENTILE
    return info


def _int8_rounded(w: np.ndarray) -> np.ndarray:
    """`w` as quantize_static's per-channel symmetric int8 weights dequantize (axis 0, scale max|w| / 127)."""
    s = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True) / 127.0
    s[s == 0] = 1.0
    return (np.clip(np.round(w / s), -127, 127) * s).astype(np.float32)


def bias_correct(src: str, dst: str, arrays: list) -> dict:
    """Bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
    Correction", section 4.2), with the input means measured on the calibration batches: int8 rounding of a
    layer's weights W -> W + dW shifts its output's mean by dW E[x] per output channel, and that systematic shift
    compounds through the network (depthwise-separable nets most: a 3x3 depthwise kernel has 9 weights per
    channel, so each channel's rounding error does not average out). Every Conv (grouped and depthwise too) and
    Gemm (transB=1) with constant weights gets b -= dW E[x] in the fp32 graph `src` -> `dst`, before
    quantize_static rounds the (unchanged) weights. E[x]: the per-channel mean of the layer's input over the
    calibration batches (spatial positions included; zero padding at the borders is ignored)."""
    import onnx
    from onnx import numpy_helper as nh

    m = onnx.load(src)
    g = m.graph
    init = {t.name: t for t in g.initializer}

    def attr(n, name, default):
        return next((a.i for a in n.attribute if a.name == name), default)

    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    nodes = [n for n in g.node if n.input[1:2] and n.input[1] in init and
             (len(n.input) < 3 or not n.input[2] or uses.get(n.input[2], 0) == 1) and   # a shared bias: left alone
             ((n.op_type == "Conv" and nh.to_array(init[n.input[1]]).ndim >= 3) or
              (n.op_type == "Gemm" and attr(n, "transB", 0) == 1 and attr(n, "transA", 0) == 0))]
    if not nodes:
        shutil.copy(src, dst)
        return {"layers": 0}
    ins = sorted({n.input[0] for n in nodes})
    aug = onnx.load(src)
    have = {o.name for o in aug.graph.output}
    aug.graph.output.extend(onnx.helper.ValueInfoProto(name=t) for t in ins if t not in have)
    with tempfile.TemporaryDirectory(prefix="compress-bc-") as work:
        p = os.path.join(work, "means.onnx")
        onnx.save(aug, p)
        s = session(p)
        names = [o.name for o in s.get_outputs()]
        sums, count = {t: 0.0 for t in ins}, 0
        for a in arrays:
            outs = dict(zip(names, s.run(None, a if isinstance(a, dict) else {s.get_inputs()[0].name: a})))
            n_rows = rows(a)
            for t in ins:
                v = outs[t].astype(np.float64)
                sums[t] = sums[t] + v.reshape(v.shape[0], v.shape[1], -1).mean(2).sum(0)
            count += n_rows
        del s
    shifts = []
    for n in nodes:
        w = nh.to_array(init[n.input[1]]).astype(np.float32)
        dw = (_int8_rounded(w) - w).astype(np.float64)
        mu = sums[n.input[0]] / count
        if n.op_type == "Conv":
            per_in = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(2)          # (out, in per group)
            cin, opg = w.shape[1], w.shape[0] // attr(n, "group", 1)
            d = np.array([per_in[o] @ mu[(o // opg) * cin:(o // opg + 1) * cin] for o in range(w.shape[0])])
        else:
            d = dw @ mu
        if len(n.input) > 2 and n.input[2] in init:
            b = nh.to_array(init[n.input[2]]).astype(np.float64)
            init[n.input[2]].CopyFrom(nh.from_array((b - d).astype(np.float32), n.input[2]))
        elif len(n.input) > 2 and n.input[2]:
            continue                                                          # a computed bias: left alone
        else:
            name = f"{n.input[1]}_bias_correction"
            g.initializer.append(nh.from_array((-d).astype(np.float32), name))
            del n.input[2:]
            n.input.append(name)
        shifts.append(float(np.abs(d).max()))
    onnx.save(m, dst)
    return {"layers": len(shifts), "max_shift": max(shifts) if shifts else 0.0}


def gelu_fed_matmuls(path: str) -> list[str]:
    """The MatMul/Gemm nodes whose activation input comes from a GELU (within GELU_HOPS nodes): a transformer's
    FFN down-projection, whose input has the outliers that per-tensor int8 clips or coarsens (Bondarenko et al.
    2021, "Understanding and Overcoming the Challenges of Efficient Transformer Quantization")."""
    import onnx

    g = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def gelu_above(t: str, hops: int) -> bool:
        n = producer.get(t)
        if n is None or hops == 0 or n.op_type in TEXT_OPS:
            return False
        return n.op_type in GELU_OPS or any(gelu_above(i, hops - 1) for i in n.input if i not in inits)

    return [n.name for n in g.node if n.op_type in TEXT_OPS
            and any(gelu_above(i, GELU_HOPS) for i in n.input if i not in inits)]


def _quantize_in(src, dst, name, arrays, ops, method, extra, exclude=(), unsigned=False):
    """quantize_static, quietly; its failure as one line. `unsigned`: uint8 activations (asymmetric, for
    onnxruntime's CPU: with int8 activations it leaves a QDQ Conv unfused, running in fp32 on dequantized
    tensors with its weights dequantized every run, wherever a QuantizeLinear has several consumers, e.g. a
    residual block's input read by its conv and its shortcut: 7 of compress:fmnist-cnn's 10 convs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from compress.export.onnx import quietly

    try:
        quietly(quantize_static, src, dst, calibration_reader(name, arrays), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude) or None,
                calibrate_method=getattr(CalibrationMethod, METHOD_NAMES[method]), extra_options=dict(extra))
    except CompressError:
        raise
    except Exception as e:
        raise CompressError(f"onnxruntime cannot quantize the model ({METHOD_NAMES[method]}): {first_line(e, 200)}") from None


# ----------------------------------------------------------------------------------- running and judging

def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_batched(sess, x, batch: int | None = None, step: int = 64) -> np.ndarray:
    """The first output of `sess` on every row of `x` (an array for the first input, or a dict input name -> array
    feeding several); a static `batch` pads the last chunk."""
    feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    step = batch or step
    outs = []
    for i in range(0, rows(feeds), step):
        chunk = {k: v[i:i + step] for k, v in feeds.items()}
        n = rows(chunk)
        if batch and n < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]) for k, v in chunk.items()}
        outs.append(np.asarray(sess.run(None, chunk)[0])[:n])
    return np.concatenate(outs)


def static_batch(path: str) -> int | None:
    """The ONNX file's batch dimension when it is fixed, else None."""
    import onnx

    d = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return d.dim_value if d.dim_value > 0 else None


def is_classifier(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] > 1


def embedding(out: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-sample vectors: (N, T, H) hidden states -> token mean (over the tokens where an (N, T) attention `mask`
    is 1, the pooling of sentence encoders); anything else flattened."""
    out = out.astype(np.float64)
    if out.ndim == 3:
        if mask is None or mask.shape != out.shape[:2]:
            return out.mean(1)
        m = mask.astype(np.float64)[..., None]
        return (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return out.reshape(len(out), -1)


def cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-sample cosine similarity, scale-free: random-init nets give logits of 1e-8 and less, where an absolute
    floor on the norms' product read as near-orthogonal; two all-zero vectors agree (1), zero against non-zero 0."""
    a, b = embedding(a, mask), embedding(b, mask)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    den = na * nb
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), (na == nb).astype(np.float64))


def judge(int8: np.ndarray, fp32: np.ndarray, labels: np.ndarray | None = None, mask: np.ndarray | None = None) -> dict:
    """The task-metric comparison of int8 with fp32 outputs on the same inputs (`mask`: their attention mask)."""
    out = {"samples": int(len(fp32))}
    if is_classifier(fp32):
        top, top8 = fp32.argmax(1), int8.argmax(1)
        exact = float((top8 == top).mean())
        classes = len(np.unique(top))
        logit_cos = float(cosine(int8, fp32).mean())
        # a flip between classes whose fp32 margin is within the int8 model's typical rounding error (TIE_ERRORS
        # times the sample's median |int8 - fp32| logit error: robust to one outlier logit) is a near-tie, not a
        # broken quantization: counted as agreeing while the logits agree (cosine >= COSINE_MIN). Random-init nets
        # checked on noise decide by hairs: pruned efficientnet_v2_s flipped 5 of 64 (all within 1.3 errors), swin_t
        # 12 (within 3.2), at logit cosine 0.999.
        f, e = fp32.astype(np.float64), np.abs(int8.astype(np.float64) - fp32)
        rows = np.arange(len(f))
        tie = (f[rows, top] - f[rows, top8]) < TIE_ERRORS * np.median(e, axis=1)
        ties = int(((top8 != top) & tie).sum()) if logit_cos >= COSINE_MIN else 0
        agree = exact + ties / len(f)
        out |= {"metric": "top1_agreement", "value": agree, "threshold": AGREEMENT_MIN, "ok": agree >= AGREEMENT_MIN,
                "top1_agreement_exact": exact, "near_ties": ties, "logit_cosine_mean": logit_cos,
                "fp32_classes_predicted": classes}
        if classes == 1 and len(fp32) > 1:   # e.g. random-init torchvision nets: vanishing logits, one class
            out["note"] = ("the fp32 model predicts one class on every check input, so top-1 agreement says little "
                           f"(logit cosine int8 vs fp32 {out['logit_cosine_mean']:.3f})")
        elif ties:
            out["note"] = (f"{ties} of {len(f)} top-1 decisions flipped between classes whose fp32 margin is within "
                           f"{TIE_ERRORS} times the int8 model's median logit error (near-ties), counted as agreeing: "
                           f"exact agreement {exact:.4f}, logit cosine int8 vs fp32 {logit_cos:.3f}")
        if labels is not None:
            out |= {"accuracy_int8": float((int8.argmax(1) == labels).mean()),
                    "accuracy_fp32": float((fp32.argmax(1) == labels).mean())}
    else:
        c = cosine(int8, fp32, mask)
        out |= {"metric": "cosine", "value": float(c.mean()), "min": float(c.min()), "threshold": COSINE_MIN,
                "ok": float(c.mean()) >= COSINE_MIN}
    return out


def _labelled(dataset: str, split: str, shape: tuple, n: int, seed: int):
    from compress.accuracy import data

    ds = data.load(dataset, split, shape)
    sub = data.calibration_subset(ds, n, seed)
    return sub.images.numpy(), sub.labels.numpy(), f"{len(sub)} samples of {dataset} ({split} split, stratified, seed {seed})"


def choose_method(fp32_path: str, pre: str, work: str, arrays: list, dataset: str | None, shape: tuple,
                  batch: int | None, symmetric: bool, text: bool, log) -> tuple[str, dict, dict]:
    """(method, selection record, the chosen variant's quantize info); the chosen model is left at
    work/<method>.onnx. Each method is tried on the graph as is and with bias correction (bias_correct)."""
    if dataset is None:
        return "minmax", {"method": "MinMax", "chosen_by": "default: MinMax (no labelled data to judge the "
                          "methods by; MinMax covers every calibration activation, the histogram methods clip)"}, {}
    x, y, desc = _labelled(dataset, "train", shape, SELECT_SAMPLES, 1)
    ref = run_batched(session(fp32_path), x, batch)
    log("int8 bias correction (input means on the calibration data)")
    pre_bc = os.path.join(work, "pre_bias_corrected.onnx")
    try:
        bc = bias_correct(pre, pre_bc, arrays)
    except Exception as e:                       # e.g. a graph onnxruntime cannot run with its inner outputs exposed
        bc = {"layers": 0, "error": first_line(e, 200)}
        log(f"int8 bias correction skipped: {bc['error']}")
    variants = [(m, False) for m in METHODS] + ([(m, True) for m in METHODS] if bc["layers"] else [])
    tried, infos, paths = [], [], []
    for m, corrected in variants:
        log(f"int8 calibration {METHOD_NAMES[m]}" + (" + bias correction" if corrected else ""))
        p = os.path.join(work, f"{m}{'_bc' if corrected else ''}.onnx")
        info = quantize(pre_bc if corrected else pre, p, arrays, m, symmetric, text)
        if corrected:
            info["bias_correction"] = BIAS_CORRECTION_NOTE | bc
        got = run_batched(session(p), x, batch)
        tried.append({"method": METHOD_NAMES[m], "bias_correction": corrected,
                      "accuracy": float((got.argmax(1) == y).mean()),
                      "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())})
        infos.append(info)
        paths.append(p)
    # ties: the higher agreement with fp32, then the earlier variant (no bias correction first; MinMax first)
    best = max(range(len(tried)), key=lambda i: (tried[i]["accuracy"], tried[i]["top1_agreement"], -i))
    m, corrected = variants[best]
    if paths[best] != os.path.join(work, f"{m}.onnx"):
        shutil.copy(paths[best], os.path.join(work, f"{m}.onnx"))
    selection = {"method": METHOD_NAMES[m], "bias_correction": corrected,
                 "chosen_by": f"measured: highest int8 top-1 accuracy on {desc} over every method with and without "
                 "bias correction (ties: the higher top-1 agreement with fp32, then without bias correction, then "
                 "MinMax, Percentile, Entropy in that order)",
                 "fp32_accuracy": float((ref.argmax(1) == y).mean()), "tried": tried}
    if "error" in bc:
        selection["bias_correction_skipped"] = bc["error"]
    return m, selection, infos[best]


def build_int8(fp32_path: str, dst: str, cal: Calibration, method: str | None, dataset: str | None, shape: tuple,
               batch: int | None, target: str, text: bool, log=lambda m: None) -> dict:
    """model.int8.onnx at `dst` from the fp32 `fp32_path`; returns the manifest's int8 section (without the parity)."""
    symmetric = target != "cpu"
    with tempfile.TemporaryDirectory(prefix="compress-int8-") as work:
        pre = os.path.join(work, "pre.onnx")
        log("int8 pre-processing (quant_pre_process)")
        pre_info = preprocess(fp32_path, pre)
        if method is None and not text:
            method, selection, info = choose_method(fp32_path, pre, work, cal.arrays, dataset, shape, batch,
                                                    symmetric, text, log)
        else:
            selection = {"method": METHOD_NAMES[method or "minmax"],
                         "chosen_by": ("--calib-method" if method else
                                       "default: MinMax (a text encoder: no labelled data to judge the methods by)")}
            method, info = method or "minmax", {}
        chosen = os.path.join(work, f"{method}.onnx")
        if not info:
            log(f"int8 quantization ({METHOD_NAMES[method]})")
            info = quantize(pre, chosen, cal.arrays, method, symmetric, text)
        shutil.copy(chosen, dst)
    return {"file": os.path.basename(dst), "from": os.path.basename(fp32_path), "tool":
            "onnxruntime.quantization.quantize_static", "preprocess": pre_info, "quantization": info,
            "calibration": {"spec": cal.spec, "data": cal.description, "samples": int(sum(rows(a) for a in cal.arrays)),
                            "batches": len(cal.arrays)} | ({"masks": cal.masks} if cal.masks else {})
                           | ({"warning": cal.warning} if cal.warning else {}),
            "method": selection}


def check(int8_path: str, fp32_path: str, cases: list, dataset: str | None, shape: tuple, batch: int | None,
          lm) -> dict:
    """int8 vs fp32 by task metric: on the dataset's test split (a labelled dataset known), else on the export's
    real inputs plus RANDOM_CHECK random ones, every input fed (attention masks padded: the tokenizer's on the
    real sentences, each random row keeping 1..T-1 tokens)."""
    s8, s32 = session(int8_path), session(fp32_path)
    if dataset is not None:
        x, y, desc = _labelled(dataset, "test", shape, CHECK_SAMPLES, 0)
        return {"inputs": desc} | judge(run_batched(s8, x, batch), run_batched(s32, x, batch), y)
    from compress.export import inputs as inp

    parts = [(what, x) for what, x, _ in cases if what.startswith("real")]
    rnd = inp.random_inputs(lm, RANDOM_CHECK, seed=2, pad=True)
    has_mask, names = inp.has_mask(lm, rnd), inp.names(lm)
    parts.append((f"{RANDOM_CHECK} random inputs (seed 2{', attention masks padded' if has_mask else ''})", rnd))
    cols = [np.concatenate([x[k].numpy() for _, x in parts]) for k in range(len(rnd))]
    x = cols[0] if len(cols) == 1 else dict(zip(names, cols))
    mask = cols[[inp.value_kind(n, t) for n, t in zip(names, rnd)].index("mask")] if has_mask else None
    out = {"inputs": " + ".join(w for w, _ in parts)}
    if mask is not None:
        out["padded_sequences"] = int((mask == 0).any(1).sum())
    return out | judge(run_batched(s8, x, batch), run_batched(s32, x, batch), mask=mask)


# ----------------------------------------------------------------------------------- compress eval on ONNX

def onnx_artifact(path: str) -> str | None:
    """The ONNX file `compress eval` runs for `path`: a .onnx file itself, or an export directory's (one with
    manifest.json) model.int8.onnx, else its model.onnx. None: not an ONNX artifact (a model spec or pruned dir)."""
    if path.endswith(".onnx") and os.path.isfile(path):
        return path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json")):
        for name in (INT8_FILE, "model.onnx"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CompressError(f"{path}: an export directory without {INT8_FILE} or model.onnx")
    return None


def onnx_inputs(path: str) -> list[tuple[str, tuple, str]]:
    """(name, shape (None: a symbolic dimension), numpy dtype) of every graph input of an ONNX file."""
    import onnx

    g = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return [(i.name, tuple(d.dim_value if d.dim_value > 0 else None for d in i.type.tensor_type.shape.dim),
             onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
            for i in g.input if i.name not in inits]


def onnx_input(path: str) -> tuple[tuple, str, int | None]:
    """(per-sample input shape, numpy dtype, static batch or None) of an ONNX file's first input."""
    name, dims, dtype = onnx_inputs(path)[0]
    if any(d is None for d in dims[1:]):
        raise CompressError(f"{os.path.basename(path)}: input {name} has symbolic dimensions {list(dims[1:])}; "
                            "compress eval needs a fixed per-sample shape")
    return dims[1:], dtype, dims[0]


def run_tokens(path: str, tok, texts, batch_size: int, seq: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(first output, attention mask or None) of the ONNX text model on `texts` tokenised by `tok` with every input
    the file declares fed (compress.export.inputs.tokenised: token ids, the tokenizer's attention mask with its
    real padding, token type ids zeros), padded/truncated to the file's sequence length (`seq` where it is
    symbolic); CompressError in one line when its inputs are not these or it does not run on them."""
    from compress.export import inputs as inp

    base, ins = os.path.basename(path), onnx_inputs(path)
    names = [n for n, _, _ in ins]
    if any(dt != "int64" or len(d) != 2 for _, d, dt in ins) or len({d[1] for _, d, _ in ins}) > 1:
        raise CompressError(f"{base} takes {', '.join(f'{n} {dt} {list(d)}' for n, d, dt in ins)}: a text model's "
                            "inputs are int64 (batch, tokens) of one length; export it with compress export")
    try:
        cols = inp.tokenised(tok, texts, names, ins[0][1][1] or seq)
    except CompressError as e:
        raise CompressError(f"{base}: {e}; compress eval feeds token ids and their attention mask / token type ids, "
                            "or one float image tensor") from None
    feeds = {n: t.numpy() for n, t in zip(names, cols)}
    try:
        out = run_batched(session(path), feeds, ins[0][1][0], step=batch_size)
    except Exception as e:
        raise CompressError(f"{base} does not run on the tokenizer's ids ({first_line(e, 200)}); is it the model "
                            "its export directory's manifest.json names?") from None
    mask = next((feeds[n] for n, t in zip(names, cols) if inp.value_kind(n, t) == "mask"), None)
    return out, mask


def predict_onnx(path: str, ds, batch_size: int, desc: str = "eval"):
    """Logits (N, K) torch tensor of the ONNX file on every sample of `ds` (onnxruntime, CPU)."""
    import torch
    from tqdm import tqdm

    sess, (_, _, batch) = session(path), onnx_input(path)
    outs = []
    n_batches = (len(ds) + batch_size - 1) // batch_size
    for x, _ in tqdm(ds.batches(batch_size), total=n_batches, desc=desc, disable=None, leave=False):
        outs.append(run_batched(sess, x.numpy(), batch, step=batch_size))
    out = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
    if out.ndim != 2:
        raise CompressError(f"{os.path.basename(path)} is not a classifier: it returns {list(out.shape[1:])} per sample, "
                            "not (classes,) logits")
    return torch.from_numpy(out.astype(np.float32))
