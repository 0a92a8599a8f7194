"""Rasters: GeoTIFF checking, Cloud Optimized GeoTIFF conversion, STAC items and search."""
