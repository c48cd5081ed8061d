"""The whole site, stage by stage: pyinfra inventories/<site>.py deploy/site.py

Stages run in order; each is also a deploy of its own (deploy/<stage>.py).
"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "firmware", "host", "gpu", "kbs", "runtime", "verify"])
