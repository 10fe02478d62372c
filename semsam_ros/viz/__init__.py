"""Drawing: overlays, level grids, captions and the colour of each segment (shared by images and markers)."""
