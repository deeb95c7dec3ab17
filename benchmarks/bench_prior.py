"""Is a draw below the majority-class rate because of the class prior?

Few-shot draws are balanced (k per class); some test splits are not (mpqa: 67% one class). A model
trained on a balanced draw predicts as if the classes were equally likely, so on a skewed test split
it can score below the rate of always answering the largest class while still having learned
something. If that were the whole story, shifting the head's logits by the log class frequencies
of the pool the draws come from (the training split, never the test split: "logit adjustment",
Menon et al. 2021) would lift those draws above the majority rate.

For the best CCE and DML configurations a study recorded for ``--dataset`` (``tunedml best
--space cce|dml``), this retrains the final evaluation's draws (seed offsets 1000+, as ``retrain``
does, so the plain column reproduces the study's table up to rounding across machines) and scores
each on the test split twice: as trained (head argmax) and with the pool prior added to the logits.
Per draw: accuracy and macro-F1 both ways, and the majority-class rate of the test split. Runs
with a head-less inference mode (proxy, mixed) are scored as trained only.

    python benchmarks/bench_prior.py --tracking-uri sqlite:///study/mlflow.db --dataset mpqa --draws 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pool_prior(labels, test, num_classes: int):
    """Class frequencies of the examples outside the test split: what a user knows of the prior."""
    import numpy as np

    pool = np.setdiff1d(np.arange(len(labels)), test)
    return np.bincount(labels[pool], minlength=num_classes) / len(pool)


def score_draw(cfg, tokens) -> dict:
    import numpy as np
    import torch

    from tunedml.evaluate import scores
    from tunedml.train import Trainer, draw_for

    draw = draw_for(cfg, tokens)
    trainer = Trainer(cfg, tokens, draw)
    start = time.perf_counter()
    trainer.fit(evaluate_test=False)
    out = trainer.outputs(draw.test)
    classes = tokens.corpus.num_classes
    plain = trainer.evaluate(draw.test, outputs=out)
    row = {
        "seed": cfg.data.seed,
        "accuracy": plain["accuracy"],
        "macro_f1": plain["macro_f1"],
        "majority": float(np.bincount(out.labels, minlength=classes).max() / len(out.labels)),
        "seconds": time.perf_counter() - start,
    }
    if cfg.inference.mode == "head":
        log_prior = torch.log(
            torch.as_tensor(pool_prior(tokens.corpus.labels, draw.test, classes), dtype=torch.float32)
        )
        shifted = scores((out.logits + log_prior).argmax(1).numpy(), out.labels, classes)
        row.update(adjusted_accuracy=shifted["accuracy"], adjusted_macro_f1=shifted["macro_f1"])
    return row


def study_arguments(description: str, out: str) -> argparse.Namespace:
    """The options of a benchmark that retrains a study's chosen configurations on its final draws
    (this one and bench_probe.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tracking-uri", required=True, help="the study's MLflow store")
    parser.add_argument("--dataset", default="mpqa")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=out)
    return parser.parse_args()


def recorded_config(args: argparse.Namespace, space: str):
    """The best configuration the study recorded for ``args.dataset`` in ``space``, on this CPU."""
    import tunedml
    from tunedml.config import from_flat

    record = tunedml.best(args.dataset, space=space, tracking_uri=args.tracking_uri)
    return from_flat({**record.config, "train.threads": args.threads, "train.device": "cpu"})


def write_rows(rows: list[dict], path: str) -> None:
    """One JSON line a draw, with the machine that ran it."""
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}) + "\n")


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "docs/prior.jsonl")

    from tunedml.retrain.draws import draw_configs
    from tunedml.train import prepare_tokens

    rows, tokenized = [], {}
    for space in ("cce", "dml"):
        cfg = recorded_config(args, space)
        key = (cfg.model.name, cfg.data.max_length)  # both sides usually share the tokenization
        tokens = tokenized[key] = tokenized.get(key) or prepare_tokens(cfg)
        for draw_cfg in draw_configs(cfg, args.draws):
            row = {"dataset": args.dataset, "space": space, "loss": cfg.loss.name, **score_draw(draw_cfg, tokens)}
            rows.append(row)
            adjusted = f"{100 * row['adjusted_accuracy']:.1f}" if "adjusted_accuracy" in row else "n/a"
            print(
                f"{space} draw {row['seed']}: accuracy {100 * row['accuracy']:.1f}, with the pool prior {adjusted} "
                f"(majority {100 * row['majority']:.1f}), {row['seconds']:.0f}s",
                flush=True,
            )
    write_rows(rows, args.out)

    print(f"\n{args.dataset}, {args.draws} final draws (seed offsets 1000+), test accuracy / macro-F1 (%):\n")
    print("| search | loss | draw | as trained | with the pool prior | majority class |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        shifted = (
            f"{100 * r['adjusted_accuracy']:.1f} / {100 * r['adjusted_macro_f1']:.1f}"
            if "adjusted_accuracy" in r
            else "n/a"
        )
        print(
            f"| {r['space']} | {r['loss']} | {r['seed']} | {100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f} "
            f"| {shifted} | {100 * r['majority']:.1f} |"
        )


if __name__ == "__main__":
    main()
