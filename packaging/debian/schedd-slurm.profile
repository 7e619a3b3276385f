# Installed by the schedd package: Slurm's commands answered by schedd (schedd-slurm), last on
# PATH, so that a real Slurm's commands always come first.
case ":$PATH:" in *":/usr/lib/schedd/slurm-bin:"*) ;; *) PATH="${PATH:+$PATH:}/usr/lib/schedd/slurm-bin" ;; esac
