"""Does fine-tuning lose what the pre-trained encoder already knows of a task?

mpqa's worst final draws score below its test split's majority-class rate after fine-tuning with
CCE (docs/results.md, issue #20), and the class prior is not why (bench_prior.py). This asks whether
the encoder as pre-trained separates the classes better than the fine-tuned one: for the best CCE
configuration a study recorded for ``--dataset`` (``tunedml best --space cce``), on the final
evaluation's draws (seed offsets 1000+, as ``retrain`` draws them), three classifiers trained with
cross-entropy on the same draw and scored on the same test split:

- **fine-tuned**: the recorded configuration, as the study's final evaluation trains it;
- **linear probe**: the encoder frozen as pre-trained, scikit-learn's logistic regression on its
  embeddings of the draw (what ``head.fit=logistic`` fits; SetFit's head), pooled as the recorded
  configuration pools (``model.pooling``: a CLS token is not MiniLM's sentence embedding);
- **probe, then fine-tune** (LP-FT, Kumar et al. 2022): the probe's weights as the head's start,
  then the recorded run; a head that starts right gives the encoder gradients that do not first
  undo its features. What ``head.init=probe`` does; a study recorded before that key existed reads
  back with ``head.init=random``, so "fine-tuned" is the run it recorded.

    python benchmarks/bench_probe.py --tracking-uri sqlite:///study/mlflow.db --dataset mpqa --draws 10
"""

from __future__ import annotations

import time

from bench_prior import recorded_config, study_arguments, write_rows  # beside this file: the same study, draws, rows

WAYS = ("fine_tuned", "probe", "probe_then_fine_tune")


def probe(trainer) -> float:
    """Fit the logistic head on the frozen encoder's embeddings of the draw; its seconds."""
    import torch

    from tunedml.stages import LogisticHeadFit

    start = time.perf_counter()
    out = trainer.outputs(trainer.draw.train)
    LogisticHeadFit(
        trainer.model, out.embeddings.clone(), trainer.draw.train, torch.from_numpy(out.labels), trainer.cfg, 0
    )
    return time.perf_counter() - start


def score_draw(cfg, tokens) -> dict:
    import numpy as np

    from tunedml.train import Trainer, draw_for

    draw = draw_for(cfg, tokens)
    row: dict = {"seed": cfg.data.seed}
    for way in WAYS:
        trainer = Trainer(cfg, tokens, draw)  # the same initialisation seed for every way
        seconds = probe(trainer) if way != "fine_tuned" else 0.0
        if way != "probe":
            start = time.perf_counter()
            trainer.fit(evaluate_test=False)
            seconds += time.perf_counter() - start
        out = trainer.outputs(draw.test)
        scored = trainer.evaluate(draw.test, outputs=out)
        row[way] = {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"], "seconds": seconds}
        row["majority"] = float(np.bincount(out.labels).max() / len(out.labels))
    return row


def main() -> None:
    args = study_arguments(__doc__.splitlines()[0], "docs/probe.jsonl")

    import numpy as np

    from tunedml.retrain.draws import draw_configs
    from tunedml.retrain.stats import paired_differences, t_interval
    from tunedml.train import prepare_tokens

    cfg = recorded_config(args, "cce")
    if cfg.inference.mode != "head" or cfg.train.schedule != "joint":
        raise SystemExit(f"the recorded configuration is not a joint run scored by its head: {cfg}")
    tokens = prepare_tokens(cfg)
    rows = []
    for draw_cfg in draw_configs(cfg, args.draws):
        row = {"dataset": args.dataset, **score_draw(draw_cfg, tokens)}
        rows.append(row)
        print(
            f"draw {row['seed']}: "
            + ", ".join(f"{way} {100 * row[way]['accuracy']:.1f}" for way in WAYS)
            + f" (majority {100 * row['majority']:.1f})",
            flush=True,
        )
    write_rows(rows, args.out)

    majority = rows[0]["majority"]
    print(
        f"\n{args.dataset}, CCE as recorded ({cfg.train.steps} steps, lr {cfg.train.lr:g}), "
        f"{len(rows)} final draws (seed offsets 1000+), test accuracy (%); majority class {100 * majority:.1f}:\n"
    )
    print("| way | mean | std | worst | draws below majority | macro-F1 mean | seconds per run |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    accuracy = {way: np.array([r[way]["accuracy"] for r in rows]) for way in WAYS}
    for way in WAYS:
        acc = 100 * accuracy[way]
        f1 = 100 * np.array([r[way]["macro_f1"] for r in rows])
        sec = np.mean([r[way]["seconds"] for r in rows])
        below = int((acc < 100 * majority).sum())
        print(
            f"| {way.replace('_', ' ')} | {acc.mean():.1f} | {acc.std(ddof=1):.1f} | {acc.min():.1f} "
            f"| {below} of {len(rows)} | {f1.mean():.1f} | {sec:.0f} |"
        )
    print("\nPaired with fine-tuned (same draws), mean difference in points [95% t interval]:")
    for way in WAYS[1:]:
        d = t_interval(paired_differences(accuracy[way], accuracy["fine_tuned"]))
        print(f"  {way.replace('_', ' ')}: {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]")


if __name__ == "__main__":
    main()
