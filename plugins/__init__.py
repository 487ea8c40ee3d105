"""The toolkit's built-in plugins: the poster's method, registered exactly like third-party plugins."""
