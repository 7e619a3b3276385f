"""The HTTP server, the dashboard and Prometheus metrics; never imports the D-Bus adapter."""
