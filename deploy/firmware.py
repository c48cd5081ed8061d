"""Stage firmware alone (after preflight): pyinfra inventories/<site>.py deploy/firmware.py

``--dry`` prints each host's BIOS diff, stages and reboots without changing anything.
"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "firmware"])
