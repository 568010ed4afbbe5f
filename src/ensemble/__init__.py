"""Ensembles of K-fold members: OOF store, blends, stacking, calibration, pair experts, audits.

Everything here works on out-of-fold (OOF) probability tables only; no Lightning inside.
"""
