"""Tools over finished runs: rank them with intervals, gate them, promote the one to ship.

``leaderboard.py`` and ``promote.py`` are their entry points. Nothing here trains or imports a
task: runs come from the MLflow store, per-sample scores from each run's evaluation artifact
(``gt_vs_pred.jsonl`` and ``eval/``), scored again when needed by the evaluator the artifact names.
"""
