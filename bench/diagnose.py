"""Two speed diagnostics on the device anomdet picks, with the bundled model as loaded.

`python -m bench.diagnose sweep CSV [ROWS]`: `predict_scores` at several batch budgets on
the same texts (the CSV's, repeated to ROWS), and tokenisation alone, in one run.
`python -m bench.diagnose profile CSV`: where 20 training steps of `fine_tune` spend their
time (torch.profiler: the host's time against the device's).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from anomdet.batching import encode
from anomdet.device import configure_threads, describe, pick_device
from anomdet.encoder import load_base_model, quiet_transformers
from anomdet.finetune import fine_tune
from anomdet.inference import for_inference, predict_scores
from anomdet.settings import TrainingSettings
from anomdet.training import train_config
from bench.suite import read_labelled_csv

# (tokens, texts) per batch; None: the device's own budget.
BUDGETS = ((8192, 256), (32768, 1024), (131072, 4096), (262144, 8192), (None, None))


def _synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def sweep(texts: list[str], rows: int, base_model: str = "bundled") -> None:
    """Print texts/s of tokenisation and of `predict_scores` at each of `BUDGETS`."""
    texts = (texts * (rows // len(texts) + 1))[:rows]
    device = pick_device()
    model, tokenizer = load_base_model(base_model, seed=0)
    model = for_inference(model.to(device), "fp32")
    print(f"sweep on {describe(device).name}, {next(model.parameters()).dtype}, {rows} texts")
    start = time.perf_counter()
    encode(tokenizer, texts, 128)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer(texts, truncation=True, max_length=128)
    theirs = time.perf_counter() - start
    print(f"tokenisation: {rows / ours:,.0f} texts/s (encode), {rows / theirs:,.0f} texts/s "
          "(one tokenizer() call)")
    reference = None
    for tokens, batch in BUDGETS:
        predict_scores(model, tokenizer, texts[:2000], batch_size=batch, max_tokens=tokens)
        start = _synced(device)
        scores = predict_scores(model, tokenizer, texts, batch_size=batch, max_tokens=tokens)
        seconds = _synced(device) - start
        reference = scores if reference is None else reference
        print(f"{tokens or 'device'} tokens, {batch or 'device'} texts per batch: "
              f"{rows / seconds:,.0f} texts/s, scores within "
              f"{float(np.abs(scores - reference).max()):.5f} of the first budget's")


def profile(frame: pd.DataFrame, base_model: str = "bundled", steps: int = 30) -> None:
    """Print torch.profiler's table for 20 steps of `fine_tune` after 8 untimed ones."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as trace

    device = pick_device()
    model, tokenizer = load_base_model(base_model, seed=0)
    sample = frame.drop_duplicates("text").sample(min(len(frame), 2000), random_state=0)
    train, val = sample.iloc[:-200], sample.iloc[-200:]
    config = replace(train_config(TrainingSettings()), min_steps=steps, max_steps=steps,
                     evaluations=1, probe_head=False, seed=0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if device.type == "cuda" else [])
    with trace(activities=activities, schedule=schedule(wait=5, warmup=3, active=20)) as prof:
        fine_tune(model, tokenizer, train["text"].tolist(), train["label"].to_numpy(),
                  val["text"].tolist(), val["label"].to_numpy(), config,
                  progress=lambda done, total: prof.step())
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14,
                                    max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("sweep", "profile"))
    parser.add_argument("csv", help="labelled CSV with columns id,text,label")
    parser.add_argument("rows", nargs="?", type=int, default=10_000)
    parser.add_argument("--base-model", default="bundled")
    args = parser.parse_args()
    quiet_transformers()
    configure_threads()
    frame = read_labelled_csv(args.csv)
    if args.what == "sweep":
        sweep(frame["text"].astype(str).tolist(), args.rows, args.base_model)
    else:
        profile(frame, args.base_model)


if __name__ == "__main__":
    main()
