"""The toy world for the trainer: procedural shapes data, a frozen attribute evaluator and a tiny
SDXL-architecture teacher whose few-step sampling is measurably worse than its many-step sampling."""
