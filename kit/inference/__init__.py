"""Predicting new images with a finished run, or with a bundle exported from one (kit.bundle), exactly as the run
chose: each configuration's fold models at its TTA mode, their probabilities averaged, the configurations blended
by the chosen method and weights (kit.ensemble.apply_method).

    ens = kit.load("runs/leaves")                         # or a bundle folder / .zip made by `kit export`
    probs = ens.predict(["a.jpg", pil_image, array])      # DataFrame: a row per image, a column per class
    labels = ens.select(2).with_tta("none").predict_labels("test/")   # budget: 2 configurations, no TTA

A model is built as kit.member_predict builds it (build_model with load_weights=False, then
kit.features.restore_member_model, then the member's own weights), its images go through the same eval transform
and kit.tta.predict_modes, so predicting a run's own test images gives back its saved test probabilities and its
submission (tests/test_inference.py checks that, for run directories and for bundles). The plan's thread count is
not imposed (a machine predicts with its own cores), nor is the run's batch composition when views or batch sizes
differ: float32 sums may then differ in the last bits, never more.

A rank blend ranks each class's probabilities among the images predicted together (as the run ranked its test
set): predict a test set in one call. Configurations the blend gives no weight (< WEIGHT_EPS) are not predicted.
"""
from __future__ import annotations

from kit.inference._ensemble import (TIMING_IMAGES, WEIGHT_EPS, Blend, Config, Ensemble, build_member_model,
                                     read_weights, versions)
from kit.inference._bundle import BUNDLE_FILE, WEIGHTS_FILE
from kit.inference._images import csv_images, folder_images, prepare_images, write_predictions
from kit.inference._run import load, load_bundle, load_run

__all__ = ["BUNDLE_FILE", "TIMING_IMAGES", "WEIGHTS_FILE", "WEIGHT_EPS", "Blend", "Config", "Ensemble",
           "build_member_model", "csv_images", "folder_images", "load", "load_bundle", "load_run", "prepare_images",
           "read_weights", "versions", "write_predictions"]
