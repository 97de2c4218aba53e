"""The report's figures: the Pareto plot and the k-bit section."""
