"""The report contract v2 as the tests state it: the exact keys of every report.json row."""

ROW_KEYS = {
    "quantity",
    "theory",
    "paper",
    "trained_mean",
    "trained_std",
    "n_seeds",
    "threshold",
    "verdict",
    "note",
}
