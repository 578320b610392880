"""Running medrl beyond one process: archive-scale prediction on a Ray cluster."""
