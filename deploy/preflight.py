"""Stage preflight alone: pyinfra inventories/<site>.py deploy/preflight.py"""

from ccfactory.deploys import run_stages

run_stages(["preflight"])
