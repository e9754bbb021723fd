"""Developer tools: a detector simulator writing a scan as it is measured
(:mod:`~flyprep.sim.simulate`) and a finished synthetic scan (:mod:`~flyprep.sim.example`)."""
