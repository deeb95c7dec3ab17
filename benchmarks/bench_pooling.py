"""Which token summary a MiniLM run should classify from: the CLS token against the mean of the tokens.

all-MiniLM-L6-v2 is a sentence encoder trained with mean pooling, and the shipped spaces search
``model.pooling: [mean, cls]``; at 6 trials the seven-task study's DML search pooled CLS in 5 or 6
of its 6 trials on every task while the CCE search chose mean on 6 of 7 (docs/results.md), so its
verdicts mix the loss with the pooling. This measures the pooling alone, as bench_init measures the
head's start (and with its code): for each task and learning rate, CCE fine-tunes the embedded
MiniLM for 100 optimizer steps from a probed head (today's defaults) on the same ``--draws``
few-shot draws, which no search, re-scoring or retrain uses (seed offsets 3000+), once per pooling,
and scores the final model on the test split. Per cell: test accuracy mean, std and worst draw (%),
the runs below the majority-class rate, and the paired difference cls - mean with its 95% Student
t interval over the draws. Rows go to ``--results`` as they come; an interrupted run continues.

    python benchmarks/bench_pooling.py                 # mr, cr, trec; CCE; lr 2e-5 and 1e-4; 5 draws
"""

from __future__ import annotations

import sys

from bench_init import Setting, main

POOLING = Setting(
    "bench_pooling", "model.pooling", "pooling", ("mean", "cls"), "docs/pooling.jsonl", tasks="mr,cr,trec"
)

if __name__ == "__main__":
    sys.exit(main(POOLING, __doc__))
