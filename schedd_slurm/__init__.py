"""Slurm's command-line interface on schedd: sbatch, squeue, scancel, sacct, sinfo, scontrol, srun,
sacctmgr and sshare, one entry point (`schedd-slurm`) dispatching on the name it is called by.

Each command is a thin D-Bus client (schedctl.client) that prints what Slurm prints, so that
tools written for Slurm (submitit, dask-jobqueue, Snakemake, Parsl...) run unchanged.
"""

# Where a packaged entry point keeps these modules when that directory is not on Python's own path
# (the Debian package's /usr/lib/schedd/python): batch jobs' launcher is started from there too.
PRIVATE_PATH = ""
