"""The optimisation core (after Lucid's optvis): objectives, parameterisations, transforms, hooks, the render loop
and its presets. Nothing here writes files or knows about run directories."""
