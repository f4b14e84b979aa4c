"""The console and the JSON API, thin over the store's library functions."""
