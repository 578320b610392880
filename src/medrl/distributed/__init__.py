"""Running medrl beyond one process: training under torchrun (ddp) and archive-scale
prediction on a Ray cluster (ray_predict)."""
