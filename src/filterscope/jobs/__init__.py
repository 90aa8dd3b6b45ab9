"""Jobs: what a user asks for, end to end: inspect, boost, render channels or an objective, compare, atlas,
evaluate; each writes one run directory. The CLI is a thin shell over these."""
