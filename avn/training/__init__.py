"""Training of the five models: data, augmentation, losses, loops and cross-validation."""
