"""Pretraining a backbone (`clipadapt pretrain`): UniCL's unified image-text-label contrastive learning, with CLIP's
and a cross-entropy baseline's losses for comparison. What it makes is the weights every other command loads."""
