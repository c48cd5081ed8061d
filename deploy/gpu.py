"""Stage gpu alone (after preflight): pyinfra inventories/<site>.py deploy/gpu.py"""

from ccfactory.deploys import run_stages

run_stages(["preflight", "gpu"])
