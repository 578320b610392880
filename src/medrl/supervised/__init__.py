"""The supervised landmark detector every landmark table compares the agent with: a 3D CNN
that regresses one heatmap per landmark, coarse over the whole head and then locally refined
(:mod:`medrl.supervised.detector`), trained on the same scans with the same augmentation as
the agent (:mod:`medrl.supervised.training`)."""
