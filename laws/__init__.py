"""archscale.laws."""
