"""The error taxonomy of the D-Bus contract; each maps to one D-Bus error name."""

from __future__ import annotations

ERROR_PREFIX = "org.schedd.Schedd1.Error."


class SchedError(Exception):
    """Base: a request the daemon refuses, with a message a person can act on."""

    dbus_name = ERROR_PREFIX + "Failed"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SchedError):
    dbus_name = ERROR_PREFIX + "InvalidArgument"
    http_status = 400


class NotFound(SchedError):
    dbus_name = ERROR_PREFIX + "NotFound"
    http_status = 404


class AccessDenied(SchedError):
    dbus_name = ERROR_PREFIX + "AccessDenied"
    http_status = 403


class Unsatisfiable(SchedError):
    dbus_name = ERROR_PREFIX + "Unsatisfiable"
    http_status = 422


class InvalidState(SchedError):
    dbus_name = ERROR_PREFIX + "InvalidState"
    http_status = 409


class NoSpace(SchedError):
    """The state directory's file system is full: nothing can be recorded until space is freed there."""

    dbus_name = ERROR_PREFIX + "NoSpace"
    http_status = 503  # the service cannot take work now; it can once space is freed


BY_DBUS_NAME = {
    cls.dbus_name: cls
    for cls in (SchedError, InvalidArgument, NotFound, AccessDenied, Unsatisfiable, InvalidState, NoSpace)
}
