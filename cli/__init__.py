"""archscale.cli."""
