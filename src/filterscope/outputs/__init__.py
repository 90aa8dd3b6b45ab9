"""Outputs: run directories and file names, image reading/writing, figures and the static site."""
