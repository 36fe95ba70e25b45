"""From a stack to an adapted model: sampling, denoising, pairs, surgeon, fine-tuning, pretraining."""
