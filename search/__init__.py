"""archscale.search."""
