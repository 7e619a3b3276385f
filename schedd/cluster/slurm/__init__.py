"""A Slurm cluster as a federation peer (`[[peers]] kind = "slurm"`), spoken to
through slurmrestd. Its [[peers]] table is parsed by schedd.config (SlurmPeerConfig).

- token.py    HS256 JWTs for slurmrestd, signed here per submitting user
- mapping.py  a schedd spec as a Slurm job, a Slurm job as a schedd record, nodes as load (pure)
- restd.py    the slurmrestd client (aiohttp, every answer validated)
- bridge.py   the peer API the origin speaks, carried out on Slurm; polling, liveness, mirroring
"""
