"""Stage runtime alone (after preflight): pyinfra inventories/<site>.py deploy/runtime.py"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "runtime"])
