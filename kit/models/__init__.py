"""Backbones and their weights: timm model creation, pretrained sources (hub, local file, offline packages), transfer strategies."""
