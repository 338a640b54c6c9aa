"""Scoring registrations against a data set's truth: FIRE's layout, or a CSV of pairs.

``protocol`` holds the metric (control-point errors, verdicts, AUC), ``fire`` and
``control_points`` read the two kinds of truth, ``cli`` adds ``ophreg evaluate``.
"""
