"""Training, split by job: `loop` (the one loop, `Trainer`, and what freezes or groups weights for it),
`schedules` (learning rates), `batches` (seeded batches and augmented images in DataLoader workers), `distributed`
(ranks, cores and workers) and `prompt_learner` (the official prompt-learning recipe on cached features)."""
