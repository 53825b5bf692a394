"""Fine-tuning: methods, the guide's Trainer, callbacks."""
