"""The throwaway users the integration tests and benchmarks submit as.

Their homes live in /var/tmp (shared with every sandbox, unlike /tmp). A machine may keep
/etc/passwd while /var/tmp starts empty (an image restored, a cleaned /var/tmp), so an
existing user whose home is gone gets it back: useradd's --create-home only acts once.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess


def ensure_user(name: str) -> pwd.struct_passwd:
    """The user `name` (a system user with /bin/sh), made if missing, with its home present."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--home-dir", f"/var/tmp/{name}", "--shell",
                        "/bin/sh", name], check=True)
        pw = pwd.getpwnam(name)
    if not os.path.isdir(pw.pw_dir):
        os.makedirs(pw.pw_dir, mode=0o755)
        shutil.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    return pw
