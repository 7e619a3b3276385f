"""The daemon's faces: D-Bus (``api.dbus``) and HTTP (``api.http``), adapters over the core."""
