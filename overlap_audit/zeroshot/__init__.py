"""Zero-shot scoring: model loading (open_clip, Hugging Face, the small CLIP), the prompt-ensemble classifier,
and the small CLIP itself (its network and its pretraining)."""
