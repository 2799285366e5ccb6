"""Models: open_clip loading (clip.py), the demo scorer checkpoint and its training script."""
