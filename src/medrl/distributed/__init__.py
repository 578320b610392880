"""Training and prediction over several processes, GPUs or machines."""
