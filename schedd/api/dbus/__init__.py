"""The D-Bus adapter: the org.schedd.Schedd1 manager and job objects over the core's engine."""
