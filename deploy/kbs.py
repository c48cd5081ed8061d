"""Stage kbs alone (after preflight): pyinfra inventories/<site>.py deploy/kbs.py"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "kbs"])
