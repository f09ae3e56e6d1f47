"""Leave-one-site-out domain generalisation: ``fedeye benchmark dg`` as a benchmark script.

Measures, per method (fedavg, fedprox, fedbn, fedadam, prompt-experts, local,
centralized, oracle), the AUC on a hospital the federation never saw and on the seen
hospitals' test splits, bytes of model arrays per site per round and wall time
per round; prints the targets of issue 3 with MET or MISSED:

- unseen-site AUC: prompt-experts >= FedAvg + 3 points;
- seen-site AUC: prompt-experts within 2 points of centralized;
- frozen-backbone prompt-experts: bytes per site per round <= 1% of full-model FedAvg;

and (issue 15) balanced accuracy, sensitivity, specificity and ECE on the
held-out site at the operating point each model carries, after ``fedeye
adapt`` and after ``fedeye calibrate`` with 10/20/40 labels, against an oracle.

Options are those of the command (``--help``); the default (5 synthetic
hospitals x 160 images, 64 px, 10 rounds x 1 epoch, 3 seeds) took 23 and 29
minutes as two processes split by held-out site on 2 CPU cores shared with
other benchmarks (fedavg, prompt-experts, centralized and oracle; every
method takes longer); split a run by ``--held-out`` or ``--seed`` and join
the parts with ``fedeye benchmark dg-merge``. Results go to ``--out``
(default ``dg-results``).
"""

from __future__ import annotations

import sys

from fedeye.cli.main import app

if __name__ == "__main__":
    app(["benchmark", "dg", *sys.argv[1:]])
