"""Stage host alone (after preflight): pyinfra inventories/<site>.py deploy/host.py"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "host"])
