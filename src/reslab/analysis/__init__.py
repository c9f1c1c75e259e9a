"""Reproducing the paper: experiments that train (or evaluate) runs and write reports.

    reslab reproduce degradation      plain vs residual nets, error curves (Fig. 1, Fig. 6)
    reslab reproduce cifar10-table6   ResNet-20 ... 110 against Table 6
    reslab reproduce layer-responses  std of 3x3 layer responses (Fig. 7)
    reslab reproduce imagenet-table   1-crop / 10-crop errors against Tables 2-3
    reslab report RUN_DIR ...         one page comparing training runs

Modules: `experiment` (settings, resuming, parallel runs; the directory's files are
`reslab.expdir`'s), `plan` (how runs are configured), `runs` (reading run directories),
`train_error` (training error from checkpoints), `figures` (matplotlib), `report_page`
(self-contained HTML), `run_report`, `eval_report` (`reslab eval`: metrics.json, its figures and
text), one module per experiment (each with the type of its results.json; degradation's in
`degradation_results`, read back by `schedules` for --compare), and `commands` (the CLI wiring).
"""
