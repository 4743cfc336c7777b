"""Worker process: claims tasks from the dispatcher, runs them, checkpoints and reports results."""
