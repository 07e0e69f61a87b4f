"""What a bundle learns from its own catalog at build time: synthetic camera views and a projection."""
