"""Stage verify alone: pyinfra inventories/<site>.py deploy/verify.py (writes reports/readiness.*)"""

from ccfactory.deploys import run_stages

run_stages(["verify"])
