"""archscale.sweeps."""
